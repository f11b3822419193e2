"""The paper's findings this book tests, each with its source and the test made here.

Sources are the tags of ``shared/paper/FACTS.md`` (S = the paper's abstract, T = a secondary
quotation of its tables, C1 = the authors' code). Margins are fixed here, before any run, from
the paper's own numbers or stated conventions; they are never adjusted to a run's result.
"""

from __future__ import annotations

from glacier_mapping.findings import Claim

CLAIMS: dict[str, Claim] = {claim.key: claim for claim in (
    Claim(
        key="glavitu_beats_deeplab", chapter="02_glavitu_training",
        statement="GlaViTU maps glaciers more accurately than the DeepLabv3+ baseline",
        source="[T2] Alps test IoU 0.844 vs 0.835 (secondary); [I1] IGARSS 2023",
        test="mean of region IoUs on the test split, GlaViTU − DeepLabv3+ (same data, schedule "
             "and seeds)",
        compares_training=True,
    ),
    Claim(
        key="debris_region_drop", chapter="02_glavitu_training",
        statement="IoU drops in debris-rich High-Mountain Asia",
        source="[S1, S2] abstract: IoU drops to > 0.75 in debris-rich areas such as HMA",
        test="mean IoU of the other regions − HMA IoU (global GlaViTU, test split)",
    ),
    Claim(
        key="hma_level", chapter="02_glavitu_training", kind="level", margin=0.75,
        statement="IoU stays above 0.75 in High-Mountain Asia",
        source="[S1, S2] abstract",
        test="HMA test IoU of the global GlaViTU",
    ),
    Claim(
        key="region_encoding_no_cost", chapter="03_strategy_comparison", margin=-0.02,
        statement="Giving the model its region costs no accuracy where the region is known "
                  "(consistency check: the original ships region encoding, with bias "
                  "optimisation, as its model for new regions)",
        source="[C1] README, bias_optimisation.ipynb; no paper number",
        test="mean of region IoUs on the test split, region encoding − global (margin −0.02)",
        compares_training=True,
    ),
    Claim(
        key="best_strategy_unobserved", chapter="03_strategy_comparison", kind="level",
        margin=0.85,
        statement="The best strategy reaches IoU > 0.85 on previously unobserved images",
        source="[S1, S2] abstract",
        test="best strategy's mean of region IoUs on the independent acquisitions",
    ),
    Claim(
        key="sar_helps_everywhere", chapter="04_sar_thermal_ablation",
        statement="SAR backscatter and coherence increase accuracy in every region where "
                  "available",
        source="[S1, S2] abstract; [T2] Alps 0.844 → 0.873 (secondary)",
        test="per region, IoU with SAR − optical + DEM of the same seed; decided by the "
             "weakest region",
        compares_training=True,
    ),
    Claim(
        key="thermal_adds_little", chapter="04_sar_thermal_ablation", kind="within",
        margin=0.02,
        statement="Thermal data help little",
        source="[S4] secondary summary; the margin 0.02 is below the paper's SAR gain in the "
               "Alps (0.029)",
        test="mean over regions of IoU with thermal − optical + DEM of the same seed, within "
             "±0.02",
        compares_training=True,
    ),
    Claim(
        key="calibration_lowers_ece", chapter="05_confidence_calibration",
        statement="Calibrated confidence matches accuracy better than the model's own "
                  "probabilities",
        source="[S1, S2] calibrated confidence; [C1] confidence_calibration.ipynb",
        test="test ECE of the maximum softmax probability − test ECE of the chosen calibrator",
        unit="ECE",
    ),
    Claim(
        key="bias_optimisation_helps", chapter="06_bias_optimisation",
        statement="Bias optimisation of the region vector improves maps of unseen regions",
        source="[C1] README, bias_optimisation.ipynb; the paper's evaluation was not found",
        test="mean over unseen regions of IoU with the optimised vector − the unknown slot",
    ),
    Claim(
        key="iou_estimate_tiles", chapter="07_iou_estimation", margin=0.5,
        statement="Confidence predicts a map's IoU without labels (tiles)",
        source="[S1, S2] IoU estimation; formula and accuracy not found",
        test="Pearson r of estimated vs true IoU over tiles, above 0.5",
        unit="r",
    ),
    Claim(
        key="iou_estimate_regions", chapter="07_iou_estimation", margin=0.5,
        statement="Confidence predicts a map's IoU without labels (regions)",
        source="[S1, S2] IoU estimation; formula and accuracy not found",
        test="Pearson r of estimated vs true IoU over test regions, above 0.5",
        unit="r",
    ),
    Claim(
        key="iou_estimate_scenes", chapter="07_iou_estimation", margin=0.5,
        statement="Confidence predicts a map's IoU without labels (scenes)",
        source="[S1, S2] IoU estimation; formula and accuracy not found",
        test="Pearson r of estimated vs true IoU over independent scenes, above 0.5",
        unit="r",
    ),
    Claim(
        key="unobserved_scene_level", chapter="08_scene_deployment", kind="level", margin=0.85,
        statement="Maps of previously unobserved scenes reach IoU > 0.85",
        source="[S1, S2] abstract",
        test="IoU of the deployed global GlaViTU on a whole independent scene",
    ),
    Claim(
        key="model_beats_threshold", chapter="08_scene_deployment",
        statement="A trained model maps glaciers better than a brightness threshold on a real "
                  "scene (the study's premise: debris and diversity defeat simple rules)",
        source="[S1] abstract: mapping is challenged by glacier diversity and debris",
        test="Everest held-out part, model IoU − threshold IoU, bootstrap over 64 px blocks",
    ),
    Claim(
        key="change_recovered", chapter="09_glacier_change", margin=0.5,
        statement="Maps of two dates recover each glacier's area change (the study's aim of "
                  "multitemporal mapping)",
        source="[S1, S2] aim: multitemporal glacier mapping; no paper number for change",
        test="Pearson r of mapped vs true per-glacier area change on the synthetic pair "
             "(inventory glaciers >= 0.1 km² at the first date; no ice mapped = no change), "
             "above 0.5",
        unit="r",
    ),
    Claim(
        key="change_intervals_cover", chapter="09_glacier_change", margin=0.8,
        statement="90 % change intervals from calibrated confidence cover the true change of "
                  "at least 80 % of glaciers",
        source="this book's area model (calibrated confidence [S1, S2]); no paper number",
        test="share of glaciers >= 0.1 km² on the synthetic pair whose 90 % change interval "
             "covers the true change, above 0.8",
        unit="share",
    ),
)}


def claims_of(chapter: str) -> list[Claim]:
    """The claims a chapter tests, in registry order."""
    return [claim for claim in CLAIMS.values() if claim.chapter == chapter]

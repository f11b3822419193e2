"""deploy-many against a TLS scheduler: it runs with the certificates and fails fast without."""

import json
import subprocess
import time

import dask
import pytest
from distributed import LocalCluster
from distributed.security import Security
from test_deploy import scene_arrays, tiny_model, write_raster
from test_deploy_many import BANDS, write_manifest

import glacier_mapping.deploy as deploy
import glacier_mapping.deploy_many as deploy_many
from glacier_mapping.cli import main
from glacier_mapping.deploy_many import SUMMARY_JSON, ManifestError, cluster_security


def make_certificates(folder, name):
    """A self-signed CA and one certificate and key it signed (for 127.0.0.1)."""
    ca_key, ca, key, request, cert = (folder / f"{name}-{part}" for part in (
        "ca.key", "ca.pem", "key.pem", "request.csr", "cert.pem"))
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", f"/CN={name} test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", folder / "san.cnf"],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return ca, cert, key


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Certificates of the cluster's CA and of another CA, and a one-scene manifest."""
    root = tmp_path_factory.mktemp("tls")
    tiny_model(root / "model.keras")
    optical, dem = scene_arrays(30, 34)
    write_raster(root / "optical.tif", optical)
    write_raster(root / "dem.tif", dem)
    manifest = write_manifest(root / "manifest.csv", [{
        "scene_id": "tiny", "optical": "optical.tif", "bands": BANDS, "dem": "dem.tif",
        "model": "model.keras"}])
    return {"root": root, "manifest": manifest, "certs": make_certificates(root, "cluster"),
            "other": make_certificates(root, "other")}


@pytest.fixture(scope="module")
def cluster(project):
    """A TLS LocalCluster (one in-process worker) that requires encryption."""
    ca, cert, key = map(str, project["certs"])
    security = Security(tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key,
                        tls_worker_cert=cert, tls_worker_key=key, tls_client_cert=cert,
                        tls_client_key=key, require_encryption=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls",
                      security=security, dashboard_address=":0") as local:
        yield local


def tls_flags(ca, cert, key):
    return ["--tls-ca", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]


@pytest.mark.parametrize("source", ["flags", "dask-config"])
def test_deploy_many_over_tls(project, cluster, tmp_path, monkeypatch, capsys, caplog, source):
    monkeypatch.setattr(deploy_many, "_limit_tensorflow_threads", lambda threads: None)
    monkeypatch.setattr(deploy, "_load_model", deploy._load_model)  # the worker shares it
    ca, cert, key = project["certs"]
    argv = ["deploy-many", str(project["manifest"]), "--scheduler", cluster.scheduler_address,
            "--out", str(tmp_path)]
    config = {"distributed.comm.tls.ca-file": str(ca), "distributed.comm.tls.client.cert":
              str(cert), "distributed.comm.tls.client.key": str(key)}
    with dask.config.set(config if source == "dask-config" else {}):
        code = main(argv + (tls_flags(ca, cert, key) if source == "flags" else []))
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert code == 0, summary["results"][0]["error"]
    assert summary["succeeded"] == 1 and summary["workers"] == 1
    assert (tmp_path / "tiny" / "glacier_class.tif").is_file()
    assert "1 of 1 scene(s) succeeded" in capsys.readouterr().out
    assert not [r for r in caplog.records if "runs any code" in r.getMessage()]


def test_connecting_without_the_certificates_fails_fast(project, cluster, capsys, monkeypatch):
    monkeypatch.setattr(deploy_many, "CONNECT_TIMEOUT", "3s")
    manifest, address = str(project["manifest"]), cluster.scheduler_address
    attempts = {
        "is a TLS scheduler; pass --tls-ca, --tls-cert and --tls-key": [address],
        f"Cannot reach the Dask scheduler at {address.replace('tls', 'tcp')}":
            [address.replace("tls", "tcp")],
        f"Cannot reach the Dask scheduler at {address} (": [address,
                                                            *tls_flags(*project["other"])],
    }
    for expected, scheduler in attempts.items():
        started = time.perf_counter()
        assert main(["deploy-many", manifest, "--scheduler", *scheduler]) == 2
        assert time.perf_counter() - started < 10
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("glacier-mapping deploy-many: error: ")
        assert expected in lines[0]


def test_tls_options_are_checked_before_anything_starts(project, tmp_path):
    ca, cert, key = project["certs"]
    address = "tls://10.0.0.5:8786"
    with pytest.raises(ManifestError, match=r"--tls-ca, --tls-key given without --tls-cert"):
        cluster_security(address, ca, None, key)
    with pytest.raises(ManifestError, match=r"--tls-key .*nokey\.pem does not exist"):
        cluster_security(address, ca, cert, tmp_path / "nokey.pem")
    with pytest.raises(ManifestError, match=r"secure a remote scheduler; drop them"):
        cluster_security(2, ca, cert, key)
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ManifestError, match=r"junk\.pem.* cannot be loaded .*pass PEM files"):
        cluster_security(address, tmp_path / "junk.pem", cert, key)
    with pytest.raises(ManifestError, match=r"not a tls:// address"):
        cluster_security("tcp://10.0.0.5:8786", ca, cert, key)
    security = cluster_security(address, ca, cert, key)
    assert security.require_encryption and security.tls_client_key == str(key)
    assert cluster_security(2) is None
    with dask.config.set({"distributed.comm.tls.ca-file": str(ca),
                          "distributed.comm.tls.client.cert": str(cert),
                          "distributed.comm.tls.client.key": str(key)}):
        assert cluster_security(address).tls_ca_file == str(ca)

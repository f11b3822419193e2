"""Training under tf.distribute: strategy selection, its errors, and a 2-replica CPU run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_config import MINIMAL

from glacier_mapping.config import ProfileError, parse_profile
from glacier_mapping.distribute import check_distribute, check_tf_config, training_strategy

TESTS = Path(__file__).resolve().parent

VALID_TF_CONFIG = {
    "cluster": {"worker": ["host1:12345", "host2:12345"]},
    "task": {"type": "worker", "index": 1},
}

# Runs in a fresh interpreter: logical devices must be set before TensorFlow initialises.
# Trains the tiny model of test_training twice on the same data: on one device, then under
# MirroredStrategy over two logical CPU devices (global batch 4 = 2 per replica).
SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[1])
from test_training import CONFIG, dataset, tiny_model
from glacier_mapping.distribute import training_strategy
from glacier_mapping.training import train_model

def run(model, out):
    result = train_model(model, dataset().repeat(), dataset(), CONFIG, out, verbose=False)
    return {"loss": list(result.history["loss"]), "val_loss": list(result.history["val_loss"]),
            "weights": [w.tolist() for w in model.get_weights()]}

single = run(tiny_model(), sys.argv[2] + "/single")
strategy = training_strategy("mirrored")
with strategy.scope():
    model = tiny_model()
mirrored = run(model, sys.argv[2] + "/mirrored")
mirrored_variables = isinstance(model.weights[0].value, tf.distribute.DistributedValues)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "devices": list(
    strategy.extended.worker_devices), "mirrored_variables": mirrored_variables,
    "single": single, "mirrored": mirrored}))
"""

# One worker of a two-machine cluster (both on localhost; TF_CONFIG comes from the test).
WORKER_SCRIPT = """
import json, sys
from glacier_mapping.distribute import training_strategy
strategy = training_strategy("multi-worker")  # before TensorFlow runs anything else
sys.path.insert(0, sys.argv[1])
from test_training import CONFIG, dataset, tiny_model
from glacier_mapping.training import train_model
with strategy.scope():
    model = tiny_model()
result = train_model(model, dataset().repeat(), dataset(), CONFIG, sys.argv[2], verbose=False)
history = result.history
print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                  "loss": list(history["loss"]), "val_loss": list(history["val_loss"])}))
"""


def _tf_env() -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "1"}
    env.pop("TF_CONFIG", None)
    return env


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_unknown_strategy_names_are_refused():
    assert [check_distribute(name) for name in ("none", "mirrored", "multi-worker")] == [
        "none", "mirrored", "multi-worker",
    ]
    with pytest.raises(ValueError, match=r"training.distribute='gpus'.*'mirrored'"):
        check_distribute("gpus")
    with pytest.raises(ValueError, match="multi-worker"):
        training_strategy("Mirrored")


def test_profile_validates_distribute():
    training = MINIMAL["training"]
    assert parse_profile(MINIMAL).training.distribute == "none"
    mirrored = parse_profile({**MINIMAL, "training": {**training, "distribute": "mirrored"}})
    assert mirrored.training.distribute == "mirrored"
    with pytest.raises(ProfileError, match=r"Profile <memory>: training.distribute=True"):
        parse_profile({**MINIMAL, "training": {**training, "distribute": True}})
    with pytest.raises(ProfileError, match="must be one of.*multi-worker"):
        parse_profile({**MINIMAL, "training": {**training, "distribute": "horovod"}})


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{cluster: 1}", "not valid JSON"),
        (json.dumps({"task": VALID_TF_CONFIG["task"]}), "'cluster' mapping"),
        (json.dumps({**VALID_TF_CONFIG, "cluster": {"worker": []}}), "'cluster' mapping"),
        (json.dumps({**VALID_TF_CONFIG, "task": {"type": "worker", "index": 2}}), "'index'"),
        (json.dumps({**VALID_TF_CONFIG, "task": {"type": "chief", "index": 0}}), "'type'"),
    ],
)
def test_bad_tf_config_is_explained(tf_config, message):
    with pytest.raises(ValueError, match=message) as error:
        check_tf_config(tf_config)
    assert "TF_CONFIG='" in str(error.value)  # the fix: an example value


def test_valid_tf_config_and_missing_tf_config(monkeypatch):
    check_tf_config(json.dumps(VALID_TF_CONFIG))
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        training_strategy("multi-worker")


def test_multi_worker_after_tensorflow_started_is_explained():
    script = (
        "import tensorflow as tf; tf.constant(1.0) + 1.0\n"
        "from glacier_mapping.distribute import training_strategy\n"
        "training_strategy('multi-worker')\n"
    )
    hosts = [f"localhost:{port}" for port in _free_ports(1)]
    tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 0}}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**_tf_env(), "TF_CONFIG": json.dumps(tf_config)}, check=False,
    )
    assert done.returncode == 1
    assert "ValueError: training.distribute='multi-worker' could not start" in done.stderr
    assert "training_strategy('multi-worker')" in done.stderr.splitlines()[-1]  # the fix


def test_mirrored_training_on_two_cpu_replicas_matches_one_device(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), str(tmp_path)],
        capture_output=True, text=True, env=_tf_env(), timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and len(set(result["devices"])) == 2
    assert result["mirrored_variables"]  # the model was built under the strategy
    single, mirrored = result["single"], result["mirrored"]
    assert mirrored["loss"][-1] < mirrored["loss"][0]
    # Same global batch and seed: the replicas' averaged gradients equal the one-device ones.
    assert mirrored["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert mirrored["val_loss"] == pytest.approx(single["val_loss"], rel=1e-4)
    for ours, theirs in zip(mirrored["weights"], single["weights"], strict=True):
        np.testing.assert_allclose(np.array(ours), np.array(theirs), rtol=1e-3, atol=1e-5)


def test_multi_worker_training_on_two_local_workers_matches_one_device(tmp_path):
    from test_training import CONFIG, dataset, tiny_model

    from glacier_mapping.training import train_model

    hosts = [f"localhost:{port}" for port in _free_ports(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(TESTS), str(tmp_path / f"worker{index}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**_tf_env(), "TF_CONFIG": json.dumps(tf_config)},
        ))
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    single = train_model(tiny_model(), dataset().repeat(), dataset(), CONFIG, tmp_path / "one",
                         verbose=False).history
    for result in results:
        assert result["replicas"] == 2
        # Global batch 4 = 2 per worker: the same steps as on one device.
        assert result["loss"] == pytest.approx(list(single["loss"]), rel=1e-4)
        assert result["val_loss"] == pytest.approx(list(single["val_loss"]), rel=1e-4)

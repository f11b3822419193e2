"""Content-addressed artifact store."""

import pytest

from glacier_mapping.store import ArtifactStore, artifact_key


def test_reuse_and_recompute(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def build(directory):
        calls.append(directory)
        (directory / "x.txt").write_text("hello")

    first = store.get_or_create("thing", {"a": 1}, build)
    again = store.get_or_create("thing", {"a": 1}, build)
    other = store.get_or_create("thing", {"a": 2}, build)
    assert len(calls) == 2
    assert again.reused and not first.reused and not other.reused
    assert again.path == first.path and other.path != first.path
    assert (first.path / "x.txt").read_text() == "hello"
    assert [e["reused"] for e in store.events()] == [False, True, False]


def test_dependent_artifact_changes_with_its_input(tmp_path):
    store = ArtifactStore(tmp_path)
    data1 = store.get_or_create("data", {"seed": 1}, lambda d: None)
    data2 = store.get_or_create("data", {"seed": 2}, lambda d: None)
    model1 = store.get_or_create("model", {"epochs": 3}, lambda d: None, inputs=[data1])
    model2 = store.get_or_create("model", {"epochs": 3}, lambda d: None, inputs=[data2])
    assert model1.key != model2.key


def test_interrupted_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def broken(directory):
        (directory / "half.bin").write_bytes(b"12")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get_or_create("thing", {"a": 1}, broken)
    assert not any((tmp_path / "thing").iterdir())
    built = store.get_or_create("thing", {"a": 1}, lambda d: (d / "ok").write_text("1"))
    assert not built.reused and (built.path / "ok").exists()


def test_key_is_order_independent_and_rejects_objects():
    assert artifact_key("k", {"a": 1, "b": [1, 2]}) == artifact_key("k", {"b": [1, 2], "a": 1})
    with pytest.raises(TypeError, match="cannot be hashed"):
        artifact_key("k", {"a": object()})


def test_resumable_build_keeps_partial_work(tmp_path):
    store = ArtifactStore(tmp_path)
    attempts = []

    def checkpointing(directory):
        attempts.append(sorted(f.name for f in directory.iterdir()))
        (directory / "epoch1").write_text("done")
        if len(attempts) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get_or_create("model", {"a": 1}, checkpointing, resumable=True)
    assert not (store.path_for("model", artifact_key("model", {"a": 1}))).exists()
    built = store.get_or_create("model", {"a": 1}, checkpointing, resumable=True)
    assert attempts == [[], ["epoch1"]]
    assert (built.path / "epoch1").is_file()

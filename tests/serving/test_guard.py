"""The request guard in-process: identifier rules, confinement through symbolic links, the datastore's refusals,
upload limits and per-request folders on a small ASGI app, the remote-use rule, the inference time limit and the
interactive cache's byte bound."""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_sam_adapt.serving.datastore import CheckedLocalDatastore
from monai_sam_adapt.serving.errors import RequestError
from monai_sam_adapt.serving.guard import (
    InferenceTimeout,
    RequestGuard,
    access_mode,
    check_name,
    confined,
    deadline,
    is_loopback,
    request_tempfile,
    upload_root,
)
from tests.serving.helpers import oblique_volume
from tests.tiny import tiny_backbone

GOOD = ["case7", "1.2.840.113619.2.55.3", "volume 1", "final", "ct_tiny", "6f1c0a9e-2b7d-11ef-9a3e-0242ac120002"]
BAD = [
    "",
    ".",
    "..",
    ".hidden",
    "../escape",
    "../../escape",
    "a/b",
    "/abs/path",
    "a\\..\\b",
    "C:evil",
    "x:stream",
    "a\x00b",
    "a\nb",
    "%2e%2e%2fescape",
    "x" * 256,
]


@pytest.mark.parametrize("name", GOOD)
def test_plain_names_pass(name):
    assert check_name(name, "image") == name


@pytest.mark.parametrize("name", BAD + [None, 7])
def test_names_that_could_become_paths_are_refused_naming_the_parameter(name):
    with pytest.raises(RequestError) as e:
        check_name(name, "tag")
    assert e.value.status == 400 and "'tag'" in e.value.msg


def test_confined_follows_symbolic_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "inside").mkdir()
    (root / "out").symlink_to(outside)
    assert confined(root, "inside", "a.nii.gz", param="image") == root.resolve() / "inside" / "a.nii.gz"
    with pytest.raises(RequestError, match="'image'.*symbolic link"):
        confined(root, "out", "a.nii.gz", param="image")


@pytest.fixture
def store_with_links(tmp_path):
    """A studies folder with one image, a label, and links pointing out of it: an image, a label and a tag folder."""
    studies, outside = tmp_path / "studies", tmp_path / "outside"
    outside.mkdir()
    vol = oblique_volume(studies / "case7.nii.gz")
    secret = oblique_volume(outside / "secret.nii.gz", seed=3)
    (studies / "linked.nii.gz").symlink_to(secret)
    (studies / "labels" / "final").mkdir(parents=True)
    label = outside / "label_target.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(nib.load(vol).shape, np.uint8), nib.load(vol).affine), label)
    (studies / "labels" / "final" / "case7.nii.gz").symlink_to(label)
    (studies / "labels" / "evil").symlink_to(outside, target_is_directory=True)
    store = CheckedLocalDatastore(str(studies), extensions=["*.nii.gz"], auto_reload=False)
    return store, studies, outside, vol


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if not p.is_symlink()}


def test_datastore_writes_reads_and_deletes_nothing_outside_its_folder(store_with_links, tmp_path):
    store, studies, outside, vol = store_with_links
    before = _snapshot(outside)
    upload = tmp_path / "upload.nii.gz"
    upload.write_bytes(vol.read_bytes())
    for image_id in ["../escape", "/abs", "..", "a/b", "C:x"]:
        with pytest.raises(RequestError, match="'image'"):
            store.add_image(image_id, str(upload), {})
    dotdot = tmp_path / "...nii.gz"  # an upload whose file name gives the id '..'
    dotdot.write_bytes(vol.read_bytes())
    with pytest.raises(RequestError, match="'file'"):
        store.add_image("", str(dotdot), {})
    with pytest.raises(RequestError, match="'image'.*symbolic link"):  # a new image written through a link
        store.add_image("linked", str(upload), {})
    for tag in ["../../escape", "/abs/tag", "..", "evil"]:
        with pytest.raises(RequestError, match="'tag'"):
            store.save_label("case7", str(upload), tag, {})
    with pytest.raises(RequestError, match="'image'.*symbolic link"):  # final/case7.nii.gz links out
        store.save_label("case7", str(upload), "final", {})
    with pytest.raises(RequestError, match="'image'.*symbolic link"):
        store.get_image_uri("linked")
    with pytest.raises(RequestError, match="'image'"):
        store.remove_image("linked")
    with pytest.raises(RequestError, match="'label'"):
        store.remove_label("case7", "final")
    with pytest.raises(RequestError, match="'image'"):
        store.update_image_info("../x", {"a": 1})
    assert _snapshot(outside) == before  # nothing written, changed or deleted outside
    assert (studies / "linked.nii.gz").exists()
    assert store.get_image_uri("case7") == str(vol.resolve())  # the datastore still works
    assert store.add_image("new_case", str(upload), {}) == "new_case"
    assert (studies / "new_case.nii.gz").is_file()


def _guarded_app(tmp_path, max_upload_mb=1.0, mode="loopback", fail=False):
    """A small Starlette app behind the guard that copies the body into a request temp file (as MONAI Label does)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen = {}

    async def upload(request):
        body = await request.body()
        path = request_tempfile.NamedTemporaryFile(suffix=".nii.gz").name
        with open(path, "wb") as f:
            f.write(body)
        seen["file"] = path
        if fail:
            raise RequestError("refused after the upload", 400)
        return JSONResponse({"n": len(body)})

    async def on_error(request, exc):
        return JSONResponse({"detail": exc.msg}, status_code=exc.status)

    app = Starlette(routes=[Route("/up/{name}", upload, methods=["PUT"])], exception_handlers={RequestError: on_error})
    from starlette.middleware.body_limit import RequestBodyLimitMiddleware

    # as in the server: Starlette's body limit, at the same size, inside the guard
    limited = RequestBodyLimitMiddleware(app, max_body_size=int(max_upload_mb * 2**20))
    return RequestGuard(limited, max_upload_mb=max_upload_mb, mode=mode), seen


def test_uploads_are_bounded_and_their_copies_removed_answered_or_refused(tmp_path):
    from starlette.testclient import TestClient

    for fail in (False, True):
        app, seen = _guarded_app(tmp_path, fail=fail)
        with TestClient(app, client=("127.0.0.1", 5000)) as client:
            r = client.put("/up/a", content=b"x" * 1000)
            assert r.status_code == (400 if fail else 200)
            assert seen["file"].startswith(upload_root()) and not os.path.exists(seen["file"])
            assert os.listdir(upload_root()) == []  # the request's folder is gone too
    app, seen = _guarded_app(tmp_path)
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        r = client.put("/up/a", content=b"x" * (2 * 2**20))  # Content-Length over 1 MiB: refused unread
        assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"] and "file" not in seen

        def chunks():  # no Content-Length: refused once the stream passes the limit
            for _ in range(40):
                yield b"y" * 2**16

        r = client.put("/up/a", content=chunks())
        assert r.status_code == 413 and "file" not in seen
        for path in ["/up/%2e%2e", "/up/%252e%252e", "/up/a%5cb"]:
            assert client.put(path, content=b"1").status_code == 400, path
        for path, param in [("/infer/x%3Ay", "model"), ("/session/.x", "session_id"), ("/scoring/a%25b", "method")]:
            r = client.put(path, content=b"1")
            assert r.status_code == 400 and f"'{param}'" in r.json()["detail"], path
        r = client.put("/up/a", params={"image": "../x"}, content=b"1")
        assert r.status_code == 400 and "'image'" in r.json()["detail"]
        r = client.put("/up/a", params={"uncompress": "true"}, content=b"1")
        assert r.status_code == 400 and "uncompress" in r.json()["detail"]
    assert os.listdir(upload_root()) == []


@pytest.mark.parametrize(
    "mode, client, status", [("loopback", "10.1.2.3", 403), ("loopback", "::1", 200), ("trusted", "10.1.2.3", 200)]
)
def test_remote_clients_need_authentication_or_a_trusted_network(tmp_path, mode, client, status):
    from starlette.testclient import TestClient

    app, _ = _guarded_app(tmp_path, mode=mode)
    with TestClient(app, client=(client, 5000)) as c:
        r = c.put("/up/a", content=b"1")
    assert r.status_code == status
    if status == 403:
        assert "authentication" in r.json()["detail"]


def test_access_mode_and_loopback_addresses():
    assert access_mode({}) == "loopback"
    assert access_mode({"MONAI_SAM_ADAPT_TRUSTED_NETWORK": "1"}) == "trusted"
    assert access_mode({"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_SAM_ADAPT_TRUSTED_NETWORK": "1"}) == "authentication"
    assert all(is_loopback(h) for h in ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"])
    assert not any(is_loopback(h) for h in ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.org", ""])


def test_server_command_refuses_a_public_address_without_authentication(capsys, monkeypatch):
    from monai_sam_adapt.serving.__main__ import main

    monkeypatch.delenv("MONAI_SAM_ADAPT_TRUSTED_NETWORK", raising=False)
    monkeypatch.delenv("MONAI_LABEL_AUTH_ENABLE", raising=False)
    assert main(["--studies", "/s", "--host", "0.0.0.0", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err and "--trusted_network" in err and "MONAI_LABEL_AUTH_ENABLE" in err
    assert main(["--studies", "/s", "--dry_run"]) == 0  # loopback starts as before
    assert "--host 127.0.0.1" in capsys.readouterr().out
    assert main(["--studies", "/s", "--host", "0.0.0.0", "--trusted_network", "--dry_run"]) == 0
    assert capsys.readouterr().out.startswith("MONAI_SAM_ADAPT_TRUSTED_NETWORK=1 ")
    monkeypatch.setattr("monailabel.config.settings.MONAI_LABEL_AUTH_ENABLE", True)
    assert main(["--studies", "/s", "--host", "0.0.0.0", "--dry_run"]) == 0


class _Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(256, 256) for _ in range(50))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
            time.sleep(0.02)
        return x


def test_inference_past_its_deadline_stops_at_its_next_layer():
    net = _Slow().eval()
    x = torch.randn(4, 256)
    t0 = time.monotonic()
    with pytest.raises(InferenceTimeout, match="past 0.1 s.* Linear layer"), torch.no_grad(), deadline(0.1):
        net(x)
    assert time.monotonic() - t0 < 0.5  # stopped after a few layers, not the whole second
    with torch.no_grad(), deadline(None):  # no limit, and the limit does not outlive its block
        assert net(x).shape == (4, 256)


def test_a_task_keeps_its_time_limit_on_the_thread_that_runs_it():
    """MONAI Label runs inference on the request's thread, or on its own pool (MONAI_LABEL_INFER_CONCURRENCY)."""
    from concurrent.futures import ThreadPoolExecutor

    from monai_sam_adapt.serving.guard import TimeLimitedTask

    class Slow(TimeLimitedTask):
        net = _Slow().eval()

        def segment(self, request):
            with torch.no_grad():
                return "", {"shape": list(self.net(torch.randn(2, 256)).shape)}

    task = Slow()
    assert task({})[1]["shape"] == [2, 256]  # no limit set
    task.time_limit_s = 0.1
    with ThreadPoolExecutor(1) as pool, pytest.raises(InferenceTimeout):
        pool.submit(task, {}).result()


def test_interactive_cache_stays_within_its_byte_bound_over_many_images(tmp_path):
    from monai_sam_adapt.serving.interactive import InteractiveSAMTask

    sam = tiny_backbone("vit_b")
    bound = 5 * 2**11  # five of the tiny model's 2 KiB slice embeddings (LiteMedSAM's are 4 MiB)
    task = InteractiveSAMTask(sam, device="cpu", cache_size=1000, cache_bytes=bound)
    for i in range(12):
        vol = oblique_volume(tmp_path / f"v{i}.nii.gz", seed=i)
        task({"image": str(vol), "foreground": [[10, 10, 2]]})
        cache = task._embeddings
        assert 0 < cache._bytes <= cache.max_bytes == bound
    entry = cache._bytes / len(cache)
    assert len(cache) == int(bound // entry) < 12  # as many as fit, the oldest out

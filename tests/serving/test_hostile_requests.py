"""A corpus of hostile requests against the running server (``python -m monai_sam_adapt.serving`` on a folder of
NIfTI studies, loopback only, in a network namespace of its own).

Every request is sent as raw HTTP, so that encoded variants reach the server exactly as written. Each must get its
4xx (413 for oversize bodies, 503 for inference past the time limit); the server must keep serving; the request's
upload copies must be gone when it ends; and a walk of the file system afterwards must find nothing new, changed or
deleted outside the studies folder and the run's own log, model, session and cache folders.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import os
import select
import socket
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import nibabel as nib
import numpy as np
import pytest

from monai_sam_adapt.serving.demo import start_label_server
from tests.serving.helpers import oblique_volume

pytestmark = [pytest.mark.slow]

BOUNDARY = "hostileboundary7MA4YWxkTrZu0gW"


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, dict]:
    """A multipart/form-data body written by hand (file names are sent as given, NUL included)."""
    out = b""
    for name, value in (fields or {}).items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for field, filename, content in files:
        out += (
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode("latin-1")
            + content
            + b"\r\n"
        )
    out += f"--{BOUNDARY}--\r\n".encode()
    return out, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _send(sock: socket.socket, pieces) -> None:
    """Send ``pieces`` one by one, stopping as soon as the server has answered (it may refuse a body unread)."""
    for piece in pieces:
        if select.select([sock], [], [], 0)[0]:
            return
        try:
            sock.sendall(piece)
        except OSError:  # the server answered and closed before the end of the body
            return


def raw(url: str, method: str, target: str, body: bytes = b"", headers: dict | None = None, **kw):
    """Send one request exactly as written; ``(status, detail)``, or ``(None, "")`` when ``close_after`` bytes of
    the body were sent and the connection dropped (a truncated upload). ``chunks``: send the body chunked."""
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=120)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        chunks = kw.get("chunks")
        if chunks is not None:
            head += "Transfer-Encoding: chunked\r\n\r\n"
            pieces = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks] + [b"0\r\n\r\n"]
        else:
            head += f"Content-Length: {kw.get('declared', len(body))}\r\n\r\n"
            sent = body[: kw.get("close_after", len(body))]
            pieces = _pieces(sent)
        sock.sendall(head.encode("latin-1"))
        if len(body) > 2**20 or chunks is not None:
            select.select([sock], [], [], 0.5)  # a server that refuses by Content-Length answers at once
        _send(sock, pieces)
        if "close_after" in kw:
            return None, ""
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        detail = json.loads(payload.decode()).get("detail", "")
    except (ValueError, AttributeError):
        detail = payload[:200].decode("latin-1")
    return status, str(detail)


def _state(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every path below ``root`` (not below ``skip``), with size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if (d / n) not in skip]
        for n in filenames + dirnames:
            p = d / n
            if p in skip:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() and not p.is_symlink() else ()
    return out


@pytest.fixture(scope="module")
def hostile_server(loopback_netns, served_bundles, tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile")
    studies, outside = work / "studies", work / "outside"
    outside.mkdir()
    case7 = oblique_volume(studies / "case7.nii.gz")
    oblique_volume(studies / "case9.nii.gz", seed=2)
    secret = oblique_volume(outside / "secret.nii.gz", seed=3)
    (studies / "linked.nii.gz").symlink_to(secret)
    target = outside / "label_target.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 36, 5), np.uint8), nib.load(case7).affine), target)
    (studies / "labels" / "final").mkdir(parents=True)
    (studies / "labels" / "final" / "case9.nii.gz").symlink_to(target)
    (studies / "labels" / "evil").symlink_to(outside, target_is_directory=True)
    old = os.environ.get("MONAI_LABEL_SESSION_PATH")
    os.environ["MONAI_LABEL_SESSION_PATH"] = str(work / "sessions")
    try:
        proc, url = start_label_server(
            str(studies), work, bundles=served_bundles, conf={"max_upload_mb": "1", "infer_timeout_s": "0.001"}
        )
    finally:
        if old is None:
            os.environ.pop("MONAI_LABEL_SESSION_PATH")
        else:
            os.environ["MONAI_LABEL_SESSION_PATH"] = old
    yield url, proc, work, studies, outside, case7
    proc.terminate()
    proc.wait(30)
    assert not list(Path(tempfile.gettempdir()).glob(f"monai_sam_adapt-uploads-{proc.pid}-*")), "upload folder kept"


def _corpus(work: Path, outside: Path, case7: Path) -> list[tuple[str, str, str, bytes, dict, dict]]:
    """``(what, method, target, body, headers, extra)``: traversal in every parameter and endpoint, encoded variants,
    links out of the studies folder, injected expressions, bad uploads. All must be answered 4xx."""
    nii = case7.read_bytes()
    lab = nib.Nifti1Image(np.ones((40, 36, 5), np.uint8), nib.load(case7).affine)
    label = gzip.compress(lab.to_bytes())
    abs_out = quote(str(outside / "escape_abs"), safe="")
    abs_secret = str(outside / "secret.nii.gz")

    def up(filename="case.nii.gz", content=nii, field="file", fields=None):
        return multipart([(field, filename, content)], fields or {"params": "{}"})

    def infer_params(params):
        return multipart([], {"params": json.dumps(params)})

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        info = tarfile.TarInfo("../../escape_tar.nii.gz")
        info.size = len(nii)
        t.addfile(info, io.BytesIO(nii))
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    shaped = gzip.compress(nib.Nifti1Image(np.ones((7, 5, 3), np.uint8), np.eye(4)).to_bytes())
    inject = "cpu'); __import__('os').system('touch " + str(work / "injected") + "') #"
    c = []

    def add(what, method, target, body_headers=(b"", {}), **extra):
        body, headers = body_headers
        c.append((what, method, target, body, headers, extra))

    # datastore: image upload
    add("upload: image id ../", "PUT", "/datastore/image?image=..%2Fescape_up", up())
    add("upload: image id ../../", "PUT", "/datastore/image?image=..%2F..%2Fescape_up2", up())
    add("upload: absolute image id", "PUT", f"/datastore/image?image={abs_out}", up())
    add("upload: drive letter", "PUT", "/datastore/image?image=C%3Aescape", up())
    add("upload: backslashes", "PUT", "/datastore/image?image=..%5C..%5Cescape", up())
    add("upload: NUL in id", "PUT", "/datastore/image?image=escape%00x", up())
    add("upload: double-encoded ../", "PUT", "/datastore/image?image=%252e%252e%252fescape", up())
    add("upload: file name '..'", "PUT", "/datastore/image", up(filename=".."))
    add("upload: file name giving id '..'", "PUT", "/datastore/image", up(filename="...nii.gz"))
    add("upload: NUL in file name", "PUT", "/datastore/image", up(filename="x.nii\x00.gz"))
    add("upload: written through a link out", "PUT", "/datastore/image?image=linked", up())
    add("upload: deprecated route, ../", "PUT", "/datastore/?image=..%2Fescape_old", up())
    # datastore: labels
    add("label: tag ../../", "PUT", "/datastore/label?image=case7&tag=..%2F..%2Fescape_tag", up(content=label))
    add("label: absolute tag", "PUT", f"/datastore/label?image=case7&tag={abs_out}", up(content=label))
    add("label: tag ..", "PUT", "/datastore/label?image=case7&tag=..", up(content=label))
    add("label: tag %2e%2e", "PUT", "/datastore/label?image=case7&tag=%2e%2e", up(content=label))
    add("label: image ../case7", "PUT", "/datastore/label?image=..%2Fcase7&tag=final", up(content=label))
    add("label: written through a link out", "PUT", "/datastore/label?image=case9&tag=final", up(content=label))
    add("label: tag folder links out", "PUT", "/datastore/label?image=case7&tag=evil", up(content=label))
    # datastore: deletes, reads, info
    add("delete image: id ../", "DELETE", "/datastore/image?id=..%2Fescape")
    add("delete image: through a link out", "DELETE", "/datastore/image?id=linked")
    add("delete label: through a link out", "DELETE", "/datastore/label?id=case9&tag=final")
    add("delete label: tag ../../", "DELETE", "/datastore/label?id=case7&tag=..%2F..%2Fx")
    add("download image: through a link out", "GET", "/datastore/image?image=linked")
    add("download label: id ..", "GET", "/datastore/label?label=..&tag=final")
    add("image info: id ../", "PUT", "/datastore/image/info?image=..%2Fx", multipart([], {"info": "{}"}))
    add("label info: tag ../", "PUT", "/datastore/label/info?label=case7&tag=..%2Fx", multipart([], {"info": "{}"}))
    # inference
    add("infer: image ../", "POST", "/infer/ct_tiny?image=..%2Fstudies%2Fcase7", infer_params({}))
    add("infer: absolute image path", "POST", f"/infer/ct_tiny?image={quote(abs_secret, safe='')}", infer_params({}))
    add("infer: image path in params", "POST", "/infer/ct_tiny?image=case7", infer_params({"image": abs_secret}))
    add(
        "infer: saved label's tag in params",
        "POST",
        "/infer/ct_tiny?image=case7",
        infer_params({"save_label": True, "label_tag": "../../escape_infer"}),
    )
    add(
        "infer: label path in params",
        "POST",
        "/infer/sam_interactive?image=case7",
        infer_params({"label": abs_secret, "foreground": [[5, 5, 2]]}),
    )
    add("infer: expression in device", "POST", "/infer/ct_tiny?image=case7", infer_params({"device": inject}))
    add("infer: model %2e%2e", "POST", "/infer/%2e%2e?image=case7", infer_params({}))
    add("infer: session id ../../", "POST", "/infer/ct_tiny?image=case7&session_id=..%2F..%2Fx", infer_params({}))
    add("infer: image through a link out", "POST", "/infer/ct_tiny?image=linked", infer_params({}))
    add("infer: .bin label, image ../", "POST", "/infer/sam_interactive?image=..%2Fcase7", up("s.bin", b"1", "label"))
    # training, sessions, the other endpoints
    add("train: model %2e%2e", "POST", "/train/%2e%2e", (b"{}", {"Content-Type": "application/json"}))
    add(
        "train: expression in device",
        "POST",
        "/train/ct_tiny?run_sync=true",
        (json.dumps({"device": inject}).encode(), {"Content-Type": "application/json"}),
    )
    add("session: tar with ../ members", "PUT", "/session/?uncompress=true", up("s.tar", tar.getvalue(), "files"))
    add("session: get ..", "GET", "/session/%2e%2e")
    add("session: delete ../..", "DELETE", "/session/..%2F..")
    add("active learning: strategy ..", "POST", "/activelearning/%2e%2e", (b"{}", {"Content-Type": "application/json"}))
    add("scoring: method ..", "POST", "/scoring/%2e%2e", (b"{}", {"Content-Type": "application/json"}))
    add("proxy: ../../ to the archive", "GET", "/proxy/dicom/%2e%2e/%2e%2e/instances")
    add("proxy: double-encoded ..", "GET", "/proxy/dicom/%252e%252e/instances")
    add("model upload: name ..", "PUT", "/model/%2e%2e", up("m.pt", b"x"))
    # bad uploads
    add("oversize upload (Content-Length)", "PUT", "/datastore/image?image=huge", up(content=b"\0" * (2 * 2**20)))
    big, big_headers = up(content=b"\0" * (3 * 2**20))
    add("oversize upload (chunked)", "PUT", "/datastore/image?image=huge2", (b"", big_headers), chunks=_pieces(big))
    add("truncated NIfTI", "PUT", "/datastore/image?image=cut", up(content=nii[: len(nii) // 2]))
    add("not an image (text)", "PUT", "/datastore/image?image=notes", up("notes.txt", b"patient notes\n"))
    add("PNG named .nii.gz", "PUT", "/datastore/image?image=fake", up("fake.nii.gz", png))
    as_json = {"Content-Type": "application/json"}
    add("wrong content type (JSON)", "PUT", "/datastore/image?image=j", (b'{"a":1}', as_json))
    add("label of the wrong shape", "PUT", "/datastore/label?image=case7&tag=final", up(content=shaped))
    return c


def _pieces(data: bytes, size: int = 2**16) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _uploads_left(pid: int) -> list[str]:
    return [
        str(p) for root in Path(tempfile.gettempdir()).glob(f"monai_sam_adapt-uploads-{pid}-*") for p in root.rglob("*")
    ]


def _wait_no_uploads(pid: int, timeout: float = 5.0) -> list[str]:
    deadline = time.time() + timeout
    while (left := _uploads_left(pid)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def test_hostile_requests_get_4xx_write_nothing_outside_and_leave_no_uploads(hostile_server):
    import httpx

    url, proc, work, studies, outside, case7 = hostile_server
    own = {studies, work / "app", work / "cache", work / "sessions", work / "server.log"}
    tmp = Path(tempfile.gettempdir())
    before_work, before_tmp = _state(work, own), set(os.listdir(tmp))
    before_outside = _state(outside, set())
    corpus = _corpus(work, outside, case7)
    assert len(corpus) >= 30
    answers = {}
    for what, method, target, body, headers, extra in corpus:
        status, detail = raw(url, method, target, body, headers, **extra)
        answers[what] = (status, detail)
        left = _wait_no_uploads(proc.pid)
        assert not left, f"{what}: upload copies left behind: {left}"
    wrong = {w: a for w, a in answers.items() if not (400 <= a[0] < 500)}
    assert not wrong, f"not answered 4xx: {wrong}"
    assert answers["oversize upload (Content-Length)"][0] == 413
    assert answers["oversize upload (chunked)"][0] == 413
    assert answers["wrong content type (JSON)"][0] == 422
    for what in ("upload: image id ../", "label: tag ../../", "infer: saved label's tag in params"):
        assert "parameter" in answers[what][1], answers[what]
    assert "'label'" in answers["infer: label path in params"][1]
    assert "'device'" in answers["train: expression in device"][1]
    # a truncated upload: the client drops the connection part-way
    nii = case7.read_bytes()
    body, headers = multipart([("file", "t.nii.gz", nii)], {"params": "{}"})
    raw(url, "PUT", "/datastore/image?image=truncated", body, headers, declared=len(body), close_after=len(body) // 3)
    assert not _wait_no_uploads(proc.pid)
    # the server keeps serving, and nothing appeared, changed or went away outside its own folders
    assert httpx.get(f"{url}/info/", timeout=30).status_code == 200
    assert not (work / "injected").exists()
    assert _state(outside, set()) == before_outside
    assert _state(work, own) == before_work
    new_tmp = {n for n in set(os.listdir(tmp)) - before_tmp if not n.startswith(f"monai_sam_adapt-uploads-{proc.pid}")}
    assert not new_tmp, f"new entries in {tmp}: {new_tmp}"
    listed = httpx.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert not {"huge", "huge2", "cut", "notes", "fake", "j", "truncated"} & set(listed)
    assert (studies / "linked.nii.gz").is_symlink() and (outside / "secret.nii.gz").is_file()


def test_plain_requests_still_work_and_concurrent_label_writes_leave_one_whole_label(hostile_server):
    import httpx

    url, proc, work, studies, outside, case7 = hostile_server
    with open(case7, "rb") as f:
        r = httpx.put(f"{url}/datastore/image", params={"image": "fresh"}, files={"file": ("f.nii.gz", f)}, timeout=60)
    assert r.status_code == 200 and (studies / "fresh.nii.gz").is_file()
    with open(case7, "rb") as f:  # a session (3D Slicer's way to send a local volume) is read from its own folder
        r = httpx.put(f"{url}/session/", files={"files": ("vol.nii.gz", f)}, timeout=60)
    assert r.status_code == 200, r.text
    session = r.json()["session_id"]
    assert str(work / "sessions") in r.json()["session_info"]["image"]
    r = httpx.post(f"{url}/infer/ct_tiny", params={"session_id": session}, data={"params": "{}"}, timeout=120)
    assert r.status_code == 503, r.text  # past every check, then cut at this server's 1 ms limit
    assert httpx.delete(f"{url}/session/{session}", timeout=30).status_code == 200
    affine = nib.load(case7).affine
    labels = []
    for i in range(6):
        arr = np.zeros((40, 36, 5), np.uint8)
        arr[i : i + 10, 5:20, :] = 1
        labels.append(gzip.compress(nib.Nifti1Image(arr, affine).to_bytes()))

    def save(i):
        return httpx.put(
            f"{url}/datastore/label",
            params={"image": "fresh", "tag": "final"},
            files={"label": (f"l{i}.nii.gz", labels[i])},
            data={"params": "{}"},
            timeout=120,
        ).status_code

    def hostile(i):
        return httpx.put(
            f"{url}/datastore/label",
            params={"image": "fresh", "tag": f"../../race{i}"},
            files={"label": (f"l{i}.nii.gz", labels[i])},
            timeout=120,
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        good = list(pool.map(save, range(6)))
        bad = list(pool.map(hostile, range(6)))
    assert good == [200] * 6 and bad == [400] * 6
    saved = nib.load(studies / "labels" / "final" / "fresh.nii.gz").get_fdata()
    candidates = [nib.Nifti1Image.from_bytes(gzip.decompress(b)).get_fdata() for b in labels]
    assert any(np.array_equal(saved, c) for c in candidates), "the saved label is none of the uploads whole"
    json.loads((studies / "datastore_v2.json").read_text())  # the datastore's own file is intact
    assert not list(work.glob("race*")) and not list(work.parent.glob("race*"))
    assert not _wait_no_uploads(proc.pid)


def test_inference_past_the_time_limit_is_cut_with_503_and_memory_freed(hostile_server):
    import httpx
    import psutil

    url, proc, *_ = hostile_server  # a server whose limit (1 ms) every inference passes: reading the image alone
    server = psutil.Process(proc.pid)
    query = {"image": "case7", "output": "json"}
    r = httpx.post(f"{url}/infer/ct_tiny", params=query, data={"params": "{}"}, timeout=300)
    assert r.status_code == 503 and "infer_timeout_s" in r.json()["detail"], r.text
    before = server.memory_info().rss
    for _ in range(3):
        r = httpx.post(f"{url}/infer/ct_tiny", params={"image": "case7"}, data={"params": "{}"}, timeout=300)
        assert r.status_code == 503
    growth = (server.memory_info().rss - before) / 2**20
    assert growth < 150, f"server memory grew {growth:.0f} MiB over 3 cut inferences"
    assert httpx.get(f"{url}/info/", timeout=30).status_code == 200
    assert not _wait_no_uploads(proc.pid)

"""tinyseg.data.download against a local HTTP server on 127.0.0.1 (nothing leaves the machine).

The server holds a small fixture: an annotation archive shaped like the official one (two
instances files and a captions file) and JPEGs for every image.  It supports byte ranges,
and can cut a response half way, ignore ranges, or serve junk, so resuming, restarting and
verification are all exercised.
"""
import io
import os
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

import tinyseg.data.download as dl
from tinyseg.data.download import fetch, verify_image
from tinyseg.data.__main__ import main
from tinyseg.data.cache import load_split
from tinyseg.data.coco import FilterConfig
from tinyseg.data.errors import DataError
from tinyseg.data.fixture import FakeImage, coco_dict, paint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ZIP_PATH = "/annotations/annotations_trainval2017.zip"
# train: ids 1-6, val: ids 101-104.  Kept by the default filters: 2, 3, 5 and 101, 103.
TRAIN = [FakeImage(persons=[(0, 0, 10, 10)]),                   # 1: 3 %: rejected
         FakeImage(persons=[(0, 0, 32, 30)]),                   # 2: 31 %: kept
         FakeImage(persons=[(0, 0, 40, 40)]),                   # 3: 52 %: kept
         FakeImage(persons=[(0, 0, 20, 20)] * 3),               # 4: 3 persons: rejected
         FakeImage(persons=[(10, 10, 50, 40)]),                 # 5: 39 %: kept
         FakeImage()]                                           # 6: nobody: rejected
VAL = [FakeImage(persons=[(0, 0, 48, 30)]),                     # 101: 47 %: kept
       FakeImage(persons=[(0, 0, 64, 48)]),                     # 102: 100 %: rejected
       FakeImage(persons=[(5, 5, 45, 35)])]                     # 103: 39 %: kept
KEPT = {"/train2017/000000000002.jpg", "/train2017/000000000003.jpg",
        "/train2017/000000000005.jpg", "/val2017/000000000101.jpg",
        "/val2017/000000000103.jpg"}


def _jpeg(spec, seed):
    buf = io.BytesIO()
    Image.fromarray(paint(spec, np.random.default_rng(seed))).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _fixture_files():
    files = {}
    train = coco_dict(TRAIN, first_id=1, url_base="http://images.cocodataset.org/train2017")
    val = coco_dict(VAL, first_id=101, url_base="http://images.cocodataset.org/val2017")
    for set_name, specs, data in (("train2017", TRAIN, train), ("val2017", VAL, val)):
        for spec, im in zip(specs, data["images"]):
            files[f"/{set_name}/{im['file_name']}"] = _jpeg(spec, im["id"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("annotations/instances_train2017.json", json.dumps(train))
        z.writestr("annotations/instances_val2017.json", json.dumps(val))
        z.writestr("annotations/captions_train2017.json", json.dumps({"annotations": []}))
    files[ZIP_PATH] = buf.getvalue()
    return files


class Server:
    """A threaded HTTP server on 127.0.0.1 with byte ranges and injectable faults."""

    def __init__(self):
        self.files = _fixture_files()
        self.log = []               # (method, path, Range header)
        self.cut_once = set()       # paths whose next full answer stops half way
        self.no_range = set()       # paths served whole even when a range is asked
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body):
                rng = self.headers.get("Range")
                with server.lock:
                    server.log.append((self.command, self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and self.path not in server.no_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                part = data[start:]
                self.send_header("Content-Length", str(len(part)))
                self.send_header("Connection", "close")
                self.end_headers()
                if not body:
                    return
                with server.lock:
                    cut = body and self.path in server.cut_once and start == 0
                    if cut:
                        server.cut_once.discard(self.path)
                if cut:
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def gets(self, path=None):
        return [(p, r) for m, p, r in self.log if m == "GET" and (path is None or p == path)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(dl, "BACKOFF", 0.0)
    s = Server()
    yield s
    s.close()


def _run(server, root, **kw):
    return dl.download(root, annotations_url=server.url + ZIP_PATH, images_url=server.url,
                       progress=False, workers=2, timeout=10, **kw)


def test_download_fetches_annotations_then_only_kept_images(server, tmp_path):
    root = tmp_path / "coco"
    server.cut_once |= {ZIP_PATH, "/train2017/000000000003.jpg"}
    report = _run(server, root)
    assert (report.wanted, report.fetched, report.present, report.failed) == (5, 5, 0, [])
    assert [n for _, n in report.steps] == [9, 8, 8, 7, 5]
    # only the images that pass the filters were asked for
    asked = {p for p, _ in server.gets() if p.endswith(".jpg")}
    assert asked == KEPT
    # the cut downloads were resumed with a range request, not restarted
    assert any(r and r.startswith("bytes=") and int(r[6:-1]) > 0
               for _, r in server.gets(ZIP_PATH))
    assert any(r for _, r in server.gets("/train2017/000000000003.jpg"))
    # files: byte-identical, in the COCO layout, no .part left, no captions extracted
    for path in KEPT:
        assert (root / path.lstrip("/")).read_bytes() == server.files[path]
    assert not list(root.rglob("*.part"))
    assert sorted(p.name for p in (root / "annotations").iterdir()) == \
        ["instances_train2017.json", "instances_val2017.json"]
    assert (root / "annotations_trainval2017.zip").read_bytes() == server.files[ZIP_PATH]
    # and the result is a data root like any other
    ds = [load_split(root, s, 16, cache_dir=tmp_path / "cache", progress=False)
          for s in ("train", "val", "test")]
    assert sorted(np.concatenate([d.ids for d in ds]).tolist()) == [2, 3, 5, 101, 103]


def test_second_run_fetches_nothing(server, tmp_path):
    root = tmp_path / "coco"
    _run(server, root)
    n = len(server.gets())
    report = _run(server, root)
    assert (report.fetched, report.present) == (0, 5)
    assert len(server.gets()) == n


def test_other_filters_fetch_the_missing_images(server, tmp_path):
    root = tmp_path / "coco"
    _run(server, root)
    server.log.clear()
    report = _run(server, root, filters=FilterConfig(max_coverage=1.0))
    assert (report.wanted, report.present, report.fetched) == (6, 5, 1)
    assert [p for p, _ in server.gets()] == ["/val2017/000000000102.jpg"]


def test_corrupt_image_is_never_renamed_and_the_rest_arrives(server, tmp_path):
    root = tmp_path / "coco"
    bad = "/val2017/000000000101.jpg"
    good = server.files[bad]
    server.files[bad] = b"\xff\xd8\xff\xe0" + b"junk" * 100
    with pytest.raises(dl.DownloadError) as e:
        _run(server, root, retries=2)
    assert "1 of 5 images failed" in str(e.value) and bad in str(e.value)
    assert "run the command again" in str(e.value)
    assert not (root / bad.lstrip("/")).exists()
    assert not list(root.rglob("*.part"))
    assert len(server.gets(bad)) == 2  # verified, discarded, tried again
    assert all((root / p.lstrip("/")).is_file() for p in KEPT - {bad})
    server.files[bad] = good
    report = _run(server, root)
    assert (report.fetched, report.present) == (1, 4)
    assert (root / bad.lstrip("/")).read_bytes() == good


def test_server_ignoring_ranges_restarts_the_file(server, tmp_path):
    root = tmp_path / "coco"
    path = "/train2017/000000000002.jpg"
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(b"stale bytes from another file")
    server.no_range.add(path)
    _run(server, root)
    assert dest.read_bytes() == server.files[path]
    assert server.gets(path)[0][1] == "bytes=29-"  # asked to resume, got the whole file


def test_progress_counts_a_restarted_file_once(server, tmp_path):
    """Bytes thrown away (a server ignoring Range; a file failing verification) are taken
    back from the count: the annotation bar, which starts at the part file's size, passed
    100 %."""
    path = "/train2017/000000000002.jpg"
    dest = tmp_path / "x.jpg"
    part = dest.with_name("x.jpg.part")
    part.write_bytes(b"stale bytes from another file")
    server.no_range.add(path)
    counted = [part.stat().st_size]
    fetch(server.url + path, dest, verify=verify_image, on_bytes=counted.append)
    assert sum(counted) == len(server.files[path]) == dest.stat().st_size
    assert min(counted) < 0
    # a first download that fails verification and is fetched again
    bad = "/train2017/000000000003.jpg"
    good = server.files[bad]
    server.files[bad] = b"not a jpeg at all" * 10
    calls = []

    def verify_then_mend(p):
        calls.append(p)
        if len(calls) == 1:
            server.files[bad] = good
        verify_image(p)

    counted = []
    fetch(server.url + bad, tmp_path / "y.jpg", verify=verify_then_mend, on_bytes=counted.append,
          backoff=0)
    assert len(calls) == 2 and sum(counted) == len(good)


def test_complete_part_file_is_verified_and_renamed(server, tmp_path):
    root = tmp_path / "coco"
    path = "/train2017/000000000005.jpg"
    dest = root / path.lstrip("/")
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(server.files[path])
    _run(server, root)
    assert dest.read_bytes() == server.files[path]
    assert server.gets(path) == [(path, f"bytes={len(server.files[path])}-")]  # 416


def test_missing_file_on_the_server_is_reported(server, tmp_path):
    with pytest.raises(dl.DownloadError, match=r"HTTP 404"):
        dl.download(tmp_path / "x", annotations_url=server.url + "/nothing.zip",
                    progress=False)
    assert not list((tmp_path / "x").glob("*.zip*"))


def test_broken_archive_is_never_renamed(server, tmp_path):
    server.files[ZIP_PATH] = server.files[ZIP_PATH][:-100]  # truncated: directory missing
    with pytest.raises(dl.DownloadError, match="verification"):
        _run(server, tmp_path / "coco", retries=2)
    assert not (tmp_path / "coco" / "annotations_trainval2017.zip").exists()
    assert not list((tmp_path / "coco").rglob("*.part"))


def test_unreachable_server_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "BACKOFF", 0.0)
    s = Server()
    url = s.url
    s.close()  # nothing listens there any more
    with pytest.raises(dl.DownloadError, match="failed after 2 attempts"):
        dl.download(tmp_path / "c", annotations_url=url + ZIP_PATH, progress=False, retries=2,
                    timeout=5)


def test_download_command_with_environment_overrides(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYSEG_COCO_ANNOTATIONS_URL", server.url + ZIP_PATH)
    monkeypatch.setenv("TINYSEG_COCO_IMAGES_URL", server.url)
    root = tmp_path / "coco"
    assert main(["download", "--root", str(root), "--sets", "val2017", "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "2 wanted" in out and "2 fetched" in out
    assert "downloading images" in err
    assert sorted(p.name for p in (root / "val2017").iterdir()) == \
        ["000000000101.jpg", "000000000103.jpg"]
    assert not (root / "train2017").exists()


def test_image_url_rewriting():
    u = "http://images.cocodataset.org/val2017/000000000139.jpg"
    assert dl.image_url(u, "val2017", "x.jpg", None) == u
    assert dl.image_url(u, "val2017", "x.jpg", "http://127.0.0.1:8/mirror/") == \
        "http://127.0.0.1:8/mirror/val2017/000000000139.jpg"
    assert dl.image_url(None, "val2017", "x.jpg", None) == \
        "http://images.cocodataset.org/val2017/x.jpg"


def test_download_is_a_data_error():
    assert issubclass(dl.DownloadError, DataError)


def test_a_folder_at_a_files_name_fails_at_once(tmp_path):
    """It was downloaded three times and then reported as a network failure."""
    dest = tmp_path / "annotations_trainval2017.zip"
    dest.mkdir()
    with pytest.raises(DataError, match="exists and is not a file; move it away"):
        dl.fetch("http://127.0.0.1:9/never-asked.zip", dest, retries=3, backoff=0)


def _zip_with(tmp_path, data):
    import zipfile
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as f:
        f.writestr("annotations/x.json", data)
    return z


def test_extract_member_redoes_a_file_of_the_wrong_size_and_keeps_a_whole_one(tmp_path):
    import zipfile
    from tinyseg.data.download import extract_member
    data = b"0123456789" * 1000
    z = _zip_with(tmp_path, data)
    with zipfile.ZipFile(z) as f:
        csize = f.getinfo("annotations/x.json").compress_size
    assert csize != len(data)
    dest = tmp_path / "out" / "x.json"
    dest.parent.mkdir()
    dest.write_bytes(b"x" * csize)              # a broken file of the compressed size
    extract_member(z, "annotations/x.json", dest)
    assert dest.read_bytes() == data
    ino = os.stat(dest).st_ino
    extract_member(z, "annotations/x.json", dest)   # whole: left alone
    assert os.stat(dest).st_ino == ino


def test_a_resume_at_another_byte_is_retried():
    from tinyseg.data import download as dl
    assert dl._content_range_total("bytes 100-299/300", 100) == 300
    assert dl._content_range_total("bytes 100-299/*", 100) is None
    for start in (0, 200):
        with pytest.raises(dl._Retry, match=f"server resumed at byte {start}, expected 100"):
            dl._content_range_total(f"bytes {start}-299/300", 100)


def test_http_429_is_retried(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from tinyseg.data.download import fetch
    body = b"hello world" * 10
    calls = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            calls.append(self.path)
            if len(calls) == 1:
                self.send_response(429, "Too Many Requests")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/f.bin"
        out = fetch(url, tmp_path / "f.bin", retries=3, timeout=10, backoff=0.0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert out.read_bytes() == body and len(calls) == 2

"""The downloader against a local HTTP server (there is no network here) and a closed local port."""
from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time

import pytest

from tiger_jax.data import download
from tiger_jax.data.download import DownloadError, download_category, download_file, main, resolve_category


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves the test's files; `/short/...` promises more bytes than it sends, as a dropped connection does."""
  requests: list = []

  def do_GET(self):  # noqa: N802 (http.server's name)
    type(self).requests.append(self.path)
    if self.path.startswith("/short/"):
      self.send_response(200)
      self.send_header("Content-Length", "1000")
      self.end_headers()
      self.wfile.write(gzip.compress(b"x")[:10])
      return
    super().do_GET()

  def log_message(self, *args):  # keep pytest's output clean
    pass


@pytest.fixture
def server(tmp_path):
  """(base URL, served directory) of an HTTP server on 127.0.0.1 serving tmp_path/served."""
  served = tmp_path / "served"
  served.mkdir()
  _Handler.requests = []
  handler = lambda *a, **k: _Handler(*a, directory=str(served), **k)
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}/files/", served
  httpd.shutdown()
  httpd.server_close()
  thread.join(5)


def _serve_category(served, category="Toys_and_Games"):
  (served / "files").mkdir(exist_ok=True)
  contents = {}
  for name in (f"reviews_{category}_5.json.gz", f"meta_{category}.json.gz"):
    data = gzip.compress((name + "\n").encode() * 5000)
    (served / "files" / name).write_bytes(data)
    contents[name] = data
  return contents


def _closed_port_url():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/files/"


def test_downloads_both_files_atomically(server, tmp_path, capsys):
  base_url, served = server
  contents = _serve_category(served)
  out = tmp_path / "out" / "raw"
  reviews, meta = download_category("toys", out, base_url=base_url)
  assert reviews == out / "reviews_Toys_and_Games_5.json.gz" and meta == out / "meta_Toys_and_Games.json.gz"
  assert reviews.read_bytes() == contents[reviews.name] and meta.read_bytes() == contents[meta.name]
  assert sorted(p.name for p in out.iterdir()) == sorted(contents)  # no .part left behind
  assert "reviews_Toys_and_Games_5.json.gz" in capsys.readouterr().err  # the progress line


def test_existing_files_are_skipped_unless_forced(server, tmp_path):
  base_url, served = server
  contents = _serve_category(served)
  out = tmp_path / "out"
  out.mkdir()
  (out / "reviews_Toys_and_Games_5.json.gz").write_bytes(b"kept")
  download_category("Toys_and_Games", out, base_url=base_url, progress=False)
  assert (out / "reviews_Toys_and_Games_5.json.gz").read_bytes() == b"kept"
  assert _Handler.requests == ["/files/meta_Toys_and_Games.json.gz"]
  assert download_file(base_url + "meta_Toys_and_Games.json.gz", out / "meta_Toys_and_Games.json.gz",
                       progress=False) is False
  download_category("Toys_and_Games", out, base_url=base_url, progress=False, force=True)
  assert (out / "reviews_Toys_and_Games_5.json.gz").read_bytes() == contents["reviews_Toys_and_Games_5.json.gz"]


def test_missing_remote_file_is_a_clear_error(server, tmp_path):
  base_url, _ = server
  with pytest.raises(DownloadError, match="HTTP 404.*category") as info:
    download_category("Toys_and_Games", tmp_path / "out", base_url=base_url, progress=False)
  assert "reviews_Toys_and_Games_5.json.gz" in str(info.value)
  assert list((tmp_path / "out").iterdir()) == []


def test_truncated_and_non_gzip_responses_leave_nothing(server, tmp_path):
  base_url, served = server
  root = base_url.rsplit("/files/", 1)[0]
  with pytest.raises(DownloadError, match="run again"):
    download_file(f"{root}/short/x.json.gz", tmp_path / "x.json.gz", progress=False)
  (served / "page.json.gz").write_bytes(b"<html>moved</html>")
  with pytest.raises(DownloadError, match="did not return gzip"):
    download_file(f"{root}/page.json.gz", tmp_path / "page.json.gz", progress=False)
  assert list(tmp_path.glob("*.json.gz*")) == []


def test_unreachable_network_is_a_clear_error(tmp_path):
  start = time.monotonic()
  with pytest.raises(DownloadError, match="cannot reach .*network may be unreachable") as info:
    download_category("Beauty", tmp_path, base_url=_closed_port_url(), timeout=5, progress=False)
  assert "reviews_Beauty_5.json.gz" in str(info.value) and isinstance(info.value, OSError)
  assert list(tmp_path.iterdir()) == []
  assert time.monotonic() - start < 5


def test_main_exit_status(server, tmp_path, capsys):
  base_url, served = server
  _serve_category(served, "Beauty")
  assert main(["--category", "beauty", "--out_dir", str(tmp_path / "o"), "--base_url", base_url,
               "--no_progress"]) == 0
  assert "meta_Beauty.json.gz" in capsys.readouterr().out
  assert main(["--category=Beauty", f"--out_dir={tmp_path / 'p'}", f"--base_url={_closed_port_url()}",
               "--no_progress"]) == 1
  assert "tiger-download: error: cannot reach" in capsys.readouterr().err


def test_resolve_category(caplog):
  assert resolve_category("toys") == "Toys_and_Games"
  assert resolve_category("sports and outdoors") == "Sports_and_Outdoors"
  assert resolve_category("Clothing, Shoes & Jewelry") == "Clothing_Shoes_and_Jewelry"
  assert resolve_category("Beauty") == "Beauty"
  assert resolve_category("Gadgets") == "Gadgets"
  assert "not a category of the 2014 release" in caplog.text
  assert len(download.CATEGORIES) == len(set(download.CATEGORIES))

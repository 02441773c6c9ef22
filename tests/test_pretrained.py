"""ImageNet weights by name (`leukemia.models.pretrained`): the table against torchvision,
the cache folders against torch.hub, and the download against an HTTP server on 127.0.0.1
that serves fake files named by their own sha256 prefix."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import leukemia.models as M
from leukemia.io import save_weights
from leukemia.models import pretrained as P
from leukemia.models.pretrained import (
    PretrainedWeightsError,
    WeightsFile,
    WeightsUnavailableError,
    imagenet_weights,
)

ARCH = "efficientnet_b3"


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch):
    """Every cache folder under tmp_path: the real home's caches are never touched."""
    dirs = {k: tmp_path / k for k in ("torch", "leukemia", "xdg", "home")}
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setenv("LEUKEMIA_HOME", str(dirs["leukemia"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs["xdg"]))
    monkeypatch.setenv("HOME", str(dirs["home"]))
    for var in ("LEUKEMIA_WEIGHTS_URL", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setattr(P, "_DIGESTS", {})
    return dirs


class _Server:
    """http.server in a thread on 127.0.0.1 serving `files` {name: bytes}; records the
    requested paths; files named in `truncate` are cut off after half their length."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                prefix, _, name = self.path.rpartition("/")
                body = outer.files.get(name) if prefix == "/models" else None
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in outer.truncate else body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _refused_url() -> str:
    """A URL on a port where nothing listens: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/"


def _fake_entry(monkeypatch, payload: bytes, stem: str = "fake_b3", arch: str = ARCH) -> str:
    """Point the table's entry for `arch` at a file named by `payload`'s sha256 prefix."""
    name = f"{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    monkeypatch.setitem(P.IMAGENET_WEIGHTS, arch, (WeightsFile(name),))
    return name


def _payload(n: int = 3 << 20, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# ------------------------------------------------------------ table and folders
def test_table_is_torchvisions():
    """File names, URL and hash prefixes exactly as torchvision publishes them."""
    import torch.hub
    import torchvision.models as tvm

    for arch, weights in (
        ("efficientnet_b3", tvm.EfficientNet_B3_Weights.IMAGENET1K_V1),
        ("efficientnet_v2_s", tvm.EfficientNet_V2_S_Weights.IMAGENET1K_V1),
    ):
        entries = P.IMAGENET_WEIGHTS[arch]
        assert P.DEFAULT_BASE_URL + entries[0].file_name == weights.url
        for e in entries:
            assert e.sha256_prefix == torch.hub.HASH_REGEX.search(e.file_name).group(1)
    old = P.IMAGENET_WEIGHTS["efficientnet_b3"][1]
    assert old.file_name == "efficientnet_b3_rwightman-cf984f9c.pth"
    assert old.accepted_prefixes == ("cf984f9c", "b3899882")


def test_search_dirs_follow_torch_hub(homes, monkeypatch):
    import torch.hub

    def torch_checkpoints() -> Path:
        return Path(torch.hub.get_dir(), "checkpoints")

    assert P.torch_hub_checkpoints() == torch_checkpoints() == homes["torch"] / "hub/checkpoints"
    assert P.leukemia_weights_dir() == homes["leukemia"] / "weights"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.delenv("LEUKEMIA_HOME")
    assert (
        P.torch_hub_checkpoints() == torch_checkpoints() == homes["xdg"] / "torch/hub/checkpoints"
    )
    assert P.leukemia_weights_dir() == homes["xdg"] / "leukemia/weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    home = homes["home"] / ".cache"
    assert P.torch_hub_checkpoints() == torch_checkpoints() == home / "torch/hub/checkpoints"
    assert P.search_dirs() == [home / "torch/hub/checkpoints", home / "leukemia/weights"]


def test_unknown_arch_and_bad_timeout():
    with pytest.raises(PretrainedWeightsError, match="efficientnet_b3, efficientnet_v2_s"):
        imagenet_weights("resnet50")
    with pytest.raises(ValueError, match="timeout"):
        imagenet_weights(ARCH, timeout=0)


# -------------------------------------------------------------------- download
def test_download_verified_atomic_then_cached(homes, server, monkeypatch):
    payload = _payload()
    name = _fake_entry(monkeypatch, payload)
    server.files[name] = payload
    path = imagenet_weights(ARCH, base_url=server.url, progress=False)
    cache = homes["leukemia"] / "weights"
    assert path == cache / name
    assert path.read_bytes() == payload
    assert _files(cache) == [name]  # no temporary file left
    assert server.requests == [f"/models/{name}"]
    assert not (homes["torch"]).exists()  # torch's cache is torch's

    # The second call finds the file and needs no network.
    assert imagenet_weights(ARCH, base_url=_refused_url(), progress=False) == path
    assert imagenet_weights(ARCH, download=False) == path
    assert server.requests == [f"/models/{name}"]


def test_base_url_from_environment(homes, server, monkeypatch, capsys):
    payload = _payload(5000)
    name = _fake_entry(monkeypatch, payload)
    server.files[name] = payload
    monkeypatch.setenv("LEUKEMIA_WEIGHTS_URL", server.url.rstrip("/"))  # slash optional
    path = imagenet_weights(ARCH)
    assert path.read_bytes() == payload
    err = capsys.readouterr().err
    assert f"Downloading {server.url}{name}" in err and name + ":" in err  # the tqdm bar


def test_progress_off_prints_nothing(server, monkeypatch, capsys):
    payload = _payload(5000)
    server.files[_fake_entry(monkeypatch, payload)] = payload
    imagenet_weights(ARCH, base_url=server.url, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_wrong_sha256_download_leaves_nothing(homes, server, monkeypatch):
    name = _fake_entry(monkeypatch, _payload(seed=1))
    bad = _payload(seed=2)
    server.files[name] = bad
    with pytest.raises(PretrainedWeightsError) as info:
        imagenet_weights(ARCH, base_url=server.url, progress=False)
    msg = str(info.value)
    assert not isinstance(info.value, WeightsUnavailableError)
    assert server.url + name in msg
    assert name.split("-")[1][:8] in msg  # expected prefix
    assert hashlib.sha256(bad).hexdigest()[:8] in msg  # actual prefix
    assert _files(homes["leukemia"] / "weights") == []


def test_truncated_download_leaves_nothing(homes, server, monkeypatch):
    payload = _payload()
    name = _fake_entry(monkeypatch, payload)
    server.files[name] = payload
    server.truncate.add(name)
    with pytest.raises(WeightsUnavailableError, match=f"ended after {len(payload) // 2} of"):
        imagenet_weights(ARCH, base_url=server.url, progress=False)
    assert _files(homes["leukemia"] / "weights") == []


def test_http_error_is_reported(homes, server, monkeypatch):
    name = _fake_entry(monkeypatch, b"never served")
    with pytest.raises(WeightsUnavailableError, match="HTTP 404") as info:
        imagenet_weights(ARCH, base_url=server.url, progress=False)
    assert server.url + name in str(info.value)
    assert _files(homes["leukemia"] / "weights") == []


def _assert_says_where_to_put_it(msg: str, url: str, name: str, homes) -> None:
    assert "no network" in msg
    assert url in msg
    assert f"({name})" in msg
    assert str(homes["torch"] / "hub" / "checkpoints") in msg
    assert str(homes["leukemia"] / "weights") in msg


def test_refused_connection_says_no_network(homes, monkeypatch):
    name = _fake_entry(monkeypatch, b"x")
    base = _refused_url()
    with pytest.raises(WeightsUnavailableError) as info:
        imagenet_weights(ARCH, base_url=base, progress=False)
    _assert_says_where_to_put_it(str(info.value), base + name, name, homes)
    assert not (homes["leukemia"] / "weights").exists()


def test_dns_failure_says_no_network(homes, monkeypatch):
    name = _fake_entry(monkeypatch, b"x")

    def no_dns(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    with pytest.raises(WeightsUnavailableError, match="name resolution") as info:
        imagenet_weights(ARCH, progress=False)
    _assert_says_where_to_put_it(str(info.value), P.DEFAULT_BASE_URL + name, name, homes)


def test_silent_server_times_out(homes, monkeypatch):
    """A server that accepts the connection but never answers: the socket timeout fires."""
    name = _fake_entry(monkeypatch, b"x")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # the kernel completes the handshake; nobody ever reads
        base = f"http://127.0.0.1:{s.getsockname()[1]}/"
        with pytest.raises(WeightsUnavailableError, match="timed out") as info:
            imagenet_weights(ARCH, base_url=base, timeout=0.3, progress=False)
    _assert_says_where_to_put_it(str(info.value), base + name, name, homes)


def test_download_false_says_where_to_put_it(homes, server, monkeypatch):
    name = _fake_entry(monkeypatch, b"x")
    with pytest.raises(WeightsUnavailableError, match="download=False") as info:
        imagenet_weights(ARCH, download=False, base_url=server.url)
    assert server.requests == []
    assert str(homes["leukemia"] / "weights") in str(info.value)
    assert server.url + name in str(info.value)


# ---------------------------------------------------------------- local files
def _put(folder: Path, name: str, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(payload)
    return folder / name


def test_found_in_torch_hub_then_leukemia_home(homes, monkeypatch):
    payload = _payload(1000)
    name = _fake_entry(monkeypatch, payload)
    in_leukemia = _put(homes["leukemia"] / "weights", name, payload)
    base = _refused_url()  # any network use would fail
    assert imagenet_weights(ARCH, base_url=base) == in_leukemia
    in_torch = _put(homes["torch"] / "hub" / "checkpoints", name, payload)
    assert imagenet_weights(ARCH, base_url=base) == in_torch  # torch's cache first


def test_corrupted_local_file_is_refused_not_replaced(homes, server, monkeypatch):
    name = _fake_entry(monkeypatch, _payload(1000, seed=1))
    bad = _payload(1000, seed=2)
    path = _put(homes["torch"] / "hub" / "checkpoints", name, bad)
    server.files[name] = _payload(1000, seed=1)
    with pytest.raises(PretrainedWeightsError) as info:
        imagenet_weights(ARCH, base_url=server.url)
    msg = str(info.value)
    assert str(path) in msg and name.split("-")[1][:8] in msg
    assert hashlib.sha256(bad).hexdigest()[:8] in msg
    assert path.read_bytes() == bad and server.requests == []  # the user decides


def test_file_changed_after_verification_is_checked_again(homes, monkeypatch):
    payload = _payload(1000, seed=1)
    name = _fake_entry(monkeypatch, payload)
    path = _put(homes["leukemia"] / "weights", name, payload)
    assert imagenet_weights(ARCH, download=False) == path
    path.write_bytes(_payload(1000, seed=2))  # same size, new content
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(PretrainedWeightsError, match="corrupted"):
        imagenet_weights(ARCH, download=False)


def test_older_name_accepts_its_reuploaded_content(homes, monkeypatch):
    """A name torchvision once published may hold either of its genuine contents (as
    efficientnet_b3_rwightman-cf984f9c.pth does); the download uses the first entry."""
    old_content, new_content, other = (_payload(1000, seed=s) for s in (1, 2, 3))
    old_prefix = hashlib.sha256(old_content).hexdigest()[:8]
    new_prefix = hashlib.sha256(new_content).hexdigest()[:8]
    old = WeightsFile(f"old-{old_prefix}.pth", also_valid=(new_prefix,))
    monkeypatch.setitem(P.IMAGENET_WEIGHTS, ARCH, (WeightsFile(f"new-{new_prefix}.pth"), old))
    folder = homes["leukemia"] / "weights"
    for content in (old_content, new_content):
        path = _put(folder, old.file_name, content)
        assert imagenet_weights(ARCH, download=False) == path
    _put(folder, old.file_name, other)
    with pytest.raises(PretrainedWeightsError, match=f"expected {old_prefix} or {new_prefix}"):
        imagenet_weights(ARCH, download=False)
    os.unlink(folder / old.file_name)
    with pytest.raises(WeightsUnavailableError, match=f"new-{new_prefix}.pth"):
        imagenet_weights(ARCH, download=False)


def test_real_b3_old_name_checked_against_both_contents(homes):
    path = _put(
        homes["torch"] / "hub" / "checkpoints", "efficientnet_b3_rwightman-cf984f9c.pth", b""
    )
    with pytest.raises(PretrainedWeightsError, match="expected cf984f9c or b3899882") as info:
        imagenet_weights(ARCH, download=False)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------- models
def test_model_weights_imagenet_downloads_into_an_attention_head(homes, server, monkeypatch):
    """weights="imagenet" on a 2-class multi-attention B3: features.* come from the
    downloaded file, the ImageNet classifier is skipped, the head keeps its init; a later
    model finds the cached file without the network."""
    src = M.efficientnet_b3(num_classes=1000, seed=5).state_dict()
    tmp = homes["xdg"] / "src.pth"
    tmp.parent.mkdir(parents=True)
    save_weights(tmp, src)
    payload = tmp.read_bytes()
    name = _fake_entry(monkeypatch, payload, stem="efficientnet_b3_fake")
    server.files[name] = payload
    monkeypatch.setenv("LEUKEMIA_WEIGHTS_URL", server.url)

    m = M.efficientnet_b3(num_classes=2, head="multi_attention", weights="imagenet")
    rep = m.last_load_report
    assert set(rep.unexpected) == {"classifier.1.weight", "classifier.1.bias"}
    assert rep.missing and all(k.startswith("head.") for k in rep.missing)
    sd = m.state_dict()
    features = [k for k in src if k.startswith("features.")]
    assert features and all(np.array_equal(sd[k], src[k]) for k in features)
    fresh = M.efficientnet_b3(num_classes=2, head="multi_attention").state_dict()
    assert all(np.array_equal(sd[k], fresh[k]) for k in rep.missing)
    assert _files(homes["leukemia"] / "weights") == [name]

    monkeypatch.setenv("LEUKEMIA_WEIGHTS_URL", _refused_url())
    lin = M.EfficientNet(ARCH, num_classes=2, weights="imagenet")
    assert [k for k, *_ in lin.last_load_report.mismatched] == [
        "classifier.1.weight",
        "classifier.1.bias",
    ]
    assert np.array_equal(lin.state_dict()["features.0.0.weight"], src["features.0.0.weight"])
    assert server.requests == [f"/models/{name}"]


def test_model_weights_imagenet_v2s_from_leukemia_home(homes, monkeypatch):
    src = M.efficientnet_v2_s(num_classes=1000, seed=3).state_dict()
    folder = homes["leukemia"] / "weights"
    folder.mkdir(parents=True)
    save_weights(folder / "src.safetensors", src)
    payload = (folder / "src.safetensors").read_bytes()
    name = f"v2s_fake-{hashlib.sha256(payload).hexdigest()[:8]}.safetensors"
    (folder / "src.safetensors").rename(folder / name)
    monkeypatch.setitem(P.IMAGENET_WEIGHTS, "efficientnet_v2_s", (WeightsFile(name),))
    monkeypatch.setenv("LEUKEMIA_WEIGHTS_URL", _refused_url())
    m = M.efficientnet_v2_s(num_classes=2, weights="imagenet")
    sd = m.state_dict()
    assert all(np.array_equal(sd[k], v) for k, v in src.items() if k.startswith("features."))


def test_model_weights_imagenet_without_network_fails_before_building(homes, monkeypatch):
    monkeypatch.setenv("LEUKEMIA_WEIGHTS_URL", _refused_url())

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the weights were found")

    monkeypatch.setattr(M.efficientnet, "_ext", no_model)
    with pytest.raises(WeightsUnavailableError, match="efficientnet_v2_s-dd5fe13b.pth"):
        M.efficientnet_v2_s(num_classes=2, weights="imagenet")

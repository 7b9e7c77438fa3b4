import os
import secrets
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs
import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
if not os.environ.get("RAY_AUTH_TOKEN") and not (Path.home() / ".ray" / "auth_token").is_file():
    # a token for this session's clusters (ours and tests/loopback.py's), inherited by every Ray process;
    # nothing is written to ~/.ray
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)

# Object-store tests talk to an S3 server on loopback (tests/test_storage.py starts it on this port).
# Set before any Ray starts, so that every Ray worker has them; never a real account's credentials.
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    S3_PORT = _s.getsockname()[1]
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="fgbg-test", AWS_SECRET_ACCESS_KEY="fgbg-test",
    AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
)
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One real local Ray cluster for the whole test session, on loopback only as fgbg starts one (fgbg.cluster.connect)."""
    from fgbg.cluster import loopback_only

    loopback_only()
    import ray

    # 3 logical CPUs on 2 cores: two training workers and one for Ray Data decoding; the dashboard
    # (on 127.0.0.1) serves the state API that Ray Train uses to clean up after Tune trials
    ray.init(num_cpus=3, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A tiny synthetic dataset in zips: 2 batches × 24 samples at 32×32."""
    from fgbg.synth import SynthSpec, write_dataset

    root = tmp_path_factory.mktemp("synth")
    write_dataset(SynthSpec(str(root), batches=2, per_batch=24, size=32, seed=1), workers=0)
    return root


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    """Manifest caches that cannot sit next to the data go to a per-test folder, not ~/.cache."""
    monkeypatch.setenv("FGBG_CACHE", str(tmp_path / "fgbg-cache"))


BUCKET = "fgbg-test"


@pytest.fixture(scope="module")
def s3_store():
    """A fresh S3 server (moto's) behind a proxy that drops every tenth request with 503 SlowDown: the endpoint
    in the environment is the proxy's, so every object-store test runs against a store that drops requests, and
    so do the Ray processes that the tests start (they inherit the environment)."""
    from flaky_s3 import FlakyS3
    from moto.server import ThreadedMotoServer

    from loopback import free_port

    upstream = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=upstream, verbose=False)
    server.start()
    proxy = FlakyS3(urlparse(os.environ["AWS_ENDPOINT_URL"]).port, upstream, every=10)
    try:
        yield proxy
    finally:
        proxy.stop()
        server.stop()


@pytest.fixture(scope="module")
def s3_data(s3_store, synth_data):
    """The synthetic dataset uploaded to a bucket of the store: its URI."""
    fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    for zip_path in sorted(synth_data.glob("*.zip")):  # what `aws s3 cp` would upload: the zips
        pafs.copy_files(str(zip_path), f"{BUCKET}/data/{zip_path.name}", destination_filesystem=fs)
    return f"s3://{BUCKET}/data"

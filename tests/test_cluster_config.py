"""cluster.yaml, checked offline: Ray's schema, Ray's own config preparation and validation, and the security rules."""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_schema_and_validation(config):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))  # AWS defaults merged in, as `ray up` does; no cloud calls
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_cpu_head_that_does_not_train_and_autoscaled_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] >= 1 and t["resources"]["GPU"] >= 1 for t in workers)
    assert all(isinstance(v, int) for t in types.values() for v in t["resources"].values())
    assert all(t["node_config"].get("ImageId", "").startswith("ami-") for t in types.values())  # set explicitly
    major_minor = ".".join(ray.__version__.split(".")[:2])
    assert re.fullmatch(rf"rayproject/ray:{re.escape(major_minor)}\.\d+-py311-gpu", config["docker"]["image"])


def test_token_auth_everywhere_and_no_port_beyond_ssh(config):
    start = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("export RAY_AUTH_MODE=token" in c for c in start if "ray start" in c)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    # the token comes from the user's machine over SSH, never from this file
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert not re.search(r"RAY_AUTH_TOKEN=|[0-9a-f]{32}", CLUSTER_YAML.read_text())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in CLUSTER_YAML.read_text()
    assert "IpPermissions" not in config["provider"].get("security_group", {})  # Ray's group: SSH + intra-cluster only
    assert {".venv", ".git", "runs"} <= set(config["rsync_exclude"])  # the project goes up without its venv or runs


def test_each_gpu_has_the_cpus_that_keep_it_fed(config):
    """docs/benchmarks.md, "Sizing a cluster": a GPU training worker needs about 4 CPUs reading from the cache (or decoding
    local JPEGs) beside its own, by the estimate there; each GPU node type must have them."""
    for name, t in config["available_node_types"].items():
        if t["resources"].get("GPU"):
            assert t["resources"]["CPU"] / t["resources"]["GPU"] >= 4, name

"""An image is the same on two engines when its ID is, or (an engine with the containerd image
store names a loaded image by its manifest's digest) when its layers and configuration are."""
from __future__ import annotations

from types import SimpleNamespace

from hubops.stages.images import content_id, same_image

LAYERS = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]


def image(id_: str, *, layers=LAYERS, cmd=("jupyterhub",), legacy_image: str | None = "sha256:" + "c" * 64,
          created="2026-12-01T10:00:00Z", extra: dict | None = None):
    config = {"Cmd": list(cmd), "Env": ["PATH=/opt/venv/bin"], "Labels": {"hubops.managed": "true"},
              "Image": legacy_image, "OnBuild": None, "Domainname": ""}
    config.update(extra or {})
    return SimpleNamespace(id=id_, attrs={"Id": id_, "RootFS": {"Type": "layers", "Layers": list(layers)},
                                          "Config": config, "Os": "linux", "Architecture": "amd64",
                                          "Created": created})


def test_same_id_is_the_same_image():
    assert same_image(image("sha256:1"), image("sha256:1"))


def test_the_containerd_store_names_it_otherwise_but_it_is_the_same():
    classic = image("sha256:config-digest")
    containerd = image("sha256:manifest-digest", legacy_image=None)  # no legacy field, empty values left out
    del containerd.attrs["Config"]["OnBuild"], containerd.attrs["Config"]["Domainname"]
    assert content_id(classic) == content_id(containerd) and same_image(containerd, classic)


def test_other_layers_configuration_or_build_time_is_another_image():
    src = image("sha256:1")
    assert not same_image(image("sha256:2", layers=LAYERS[:1]), src)
    assert not same_image(image("sha256:2", cmd=("sh",)), src)
    assert not same_image(image("sha256:2", created="2026-12-02T10:00:00Z"), src)
    assert not same_image(image("sha256:2", extra={"Labels": {"hubops.managed": "false"}}), src)
    assert not same_image(None, src)

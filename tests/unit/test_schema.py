"""Schema planning (the database's alembic revision against an image's JupyterHub), users' tokens
lost across an upgrade, the images.jupyterhub_version parameter and its pinned build contexts."""
from __future__ import annotations


import pytest

from hubops.core.errors import HubopsError, ParameterError
from hubops.core.params import load_params
from hubops.hub import schema
from hubops.stages import images, pinned
from tests.helpers import make_params

# Revisions as JupyterHub 6.1.1 lists them, newest first (walk_revisions), cut short.
V6 = ["f460b0348206", "4621fec11365", "3c2384c5aae1", "be8ecf03ddac"]
V5 = V6[1:]


@pytest.mark.parametrize("db, head, known, expected", [
    (None, V6[0], V6, "fresh"),
    (V6[0], V6[0], V6, "same"),
    (V5[0], V6[0], V6, "migrate"),          # 5.5 database, 6.1 image: upgrade-db forward
    (V6[0], V5[0], V5, "downgrade"),        # 6.1 database, 5.5 image: refused
    ("0123456789ab", V6[0], V6, "downgrade"),  # a revision this JupyterHub has never heard of
])
def test_plan(db, head, known, expected):
    assert schema.plan(db, head, known) == expected


def test_tokens_lost_leaves_out_expired_ones():
    before = [[1, "alice", None], [2, "bob", "2026-01-01 00:00:00"], [3, "carol", "2099-01-01 00:00:00"], [4, "dan", None]]
    after = [[1, "alice", None], [4, "dan", None]]
    assert schema.tokens_lost(before, after, "2026-12-01 15:00:00") == ["carol (token 3)"]
    assert schema.tokens_lost(before, before, "2026-12-01 15:00:00") == []


def test_downgrade_message_names_the_backup_to_restore(tmp_path):
    import json

    p = load_params(make_params(tmp_path, "j6unit", port=18399, subnet="10.163.99.0/24",
                                extra=f"backup: {{dir: {tmp_path / 'b'}}}\n"))
    folder = tmp_path / "b" / "20261201T150000Z"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"database": {"alembic_revision": V5[0]},
                                                      "jupyterhub_version": "5.5.4", "created": "2026-12-01T15:00:00"}))
    s = schema.Schema(image="hubops-hub:old", jupyterhub="5.5.4", head=V5[0], revisions=V5, db=V6[0])
    msg = schema.downgrade_message(p, s, running_image="hubops-hub:new")
    assert "refused, nothing was changed" in msg and f"schema {V6[0]}" in msg
    assert "--set backup=20261201T150000Z --set image=hubops-hub:old" in msg
    (folder / "manifest.json").unlink()
    assert "none of j6unit's has schema" in schema.downgrade_message(p, s)


def test_jupyterhub_version_parameter(tmp_path):
    p = load_params(make_params(tmp_path, "j6unit", port=18399, subnet="10.163.99.0/24",
                                extra="images: {jupyterhub_version: 5.5.4}\n"))
    assert p.images.jupyterhub_version == "5.5.4"
    bad = make_params(tmp_path, "j6unit", port=18399, subnet="10.163.99.0/24", extra="images: {jupyterhub_version: latest}\n")
    with pytest.raises(ParameterError, match="images.jupyterhub_version"):
        load_params(bad)


def test_pinned_images_dir_pins_both_images_and_is_stable(tmp_path):
    src = images.PROJECT_IMAGES
    a = pinned.pinned_images_dir(src, "5.5.4")
    assert a == pinned.pinned_images_dir(src, "5.5.4")  # the same inputs, the same folder
    for kind in ("hub", "singleuser"):
        req = (a / kind / "requirements.txt").read_text()
        assert "jupyterhub==5.5.4\n" in req and "jupyterhub==6.1.1" not in req
        assert (a / kind / "Dockerfile").read_bytes() == (src / kind / "Dockerfile").read_bytes()
    assert "jupyterhub==6.1.1\n" in (src / "hub" / "requirements.txt").read_text(), "the project's file is untouched"
    ref_a = images.image_ref("hub", images_dir=a, base_id="sha256:x", extra_ca_digest=None)
    ref_default = images.image_ref("hub", images_dir=src, base_id="sha256:x", extra_ca_digest=None)
    assert ref_a != ref_default
    # the pin of the default's own version gives the default's contexts, hence its tags
    same = pinned.pinned_images_dir(src, "6.1.1")
    assert images.image_ref("hub", images_dir=same, base_id="sha256:x", extra_ca_digest=None) == ref_default
    with pytest.raises(HubopsError, match="pins no jupyterhub"):
        pinned.pin_jupyterhub("alembic==1.0\n", "5.5.4")


def test_default_images_are_jupyterhub_6():
    for kind in ("hub", "singleuser"):
        req = (images.PROJECT_IMAGES / kind / "requirements.txt").read_text()
        assert "\njupyterhub==6.1.1\n" in req and "\naiohttp==" in req

"""image_ref: the same build inputs give the same tag, any change gives another."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from hubops.core.errors import HubopsError
from hubops.stages.images import image_ref

BASE = "sha256:" + "a" * 64
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    ctx = tmp_path / "images" / "hub"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\n")
    (ctx / "requirements.txt").write_text("jupyterhub==5.5.4\n")
    (ctx / "conf" / "x.py").write_text("c = 1\n")
    return tmp_path / "images"


def ref(images_dir: Path, base: str = BASE, ca: str | None = None) -> str:
    return image_ref("hub", images_dir=images_dir, base_id=base, extra_ca_digest=ca)


def test_format_and_determinism(images_dir):
    r = ref(images_dir)
    assert re.fullmatch(r"hubops-hub:[0-9a-f]{12}", r)
    assert ref(images_dir) == r
    assert ref(Path(str(images_dir))) == r  # str or Path, same answer


def test_same_content_elsewhere_gives_same_ref(images_dir, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(images_dir, other)
    assert ref(other) == ref(images_dir)


@pytest.mark.parametrize("change", ["edit", "nested", "add", "remove", "rename", "chmod"])
def test_any_context_change_changes_ref(images_dir, change):
    before = ref(images_dir)
    ctx = images_dir / "hub"
    if change == "edit":
        (ctx / "requirements.txt").write_text("jupyterhub==5.5.3\n")
    elif change == "nested":
        (ctx / "conf" / "x.py").write_text("c = 2\n")
    elif change == "add":
        (ctx / "conf" / "y.py").write_text("")
    elif change == "remove":
        (ctx / "conf" / "x.py").unlink()
    elif change == "rename":
        (ctx / "conf" / "x.py").rename(ctx / "conf" / "z.py")
    elif change == "chmod":
        (ctx / "conf" / "x.py").chmod(0o755)
    assert ref(images_dir) != before


def test_base_and_extra_ca_change_ref(images_dir):
    r = ref(images_dir)
    assert ref(images_dir, base="sha256:" + "b" * 64) != r
    assert ref(images_dir, ca="c" * 64) != r
    assert ref(images_dir, ca="d" * 64) != ref(images_dir, ca="c" * 64)


def test_other_kinds_do_not_matter(images_dir):
    r = ref(images_dir)
    (images_dir / "singleuser").mkdir()
    (images_dir / "singleuser" / "Dockerfile").write_text("FROM x\n")
    assert ref(images_dir) == r


def test_missing_context_is_a_clear_error(tmp_path):
    with pytest.raises(HubopsError, match="no Dockerfile"):
        image_ref("hub", images_dir=tmp_path, base_id=BASE, extra_ca_digest=None)


def test_project_images_have_refs():
    for kind in ("hub", "singleuser"):
        assert image_ref(kind, images_dir=ROOT / "images", base_id=BASE, extra_ca_digest=None).startswith(
            f"hubops-{kind}:")

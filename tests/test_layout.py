"""The source root is `platform/`; it must not shadow the standard library's `platform` module."""

import platform
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_platform_is_the_stdlib_module():
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert Path(platform.__file__).parent == Path(sysconfig.get_paths()["stdlib"])


def test_rlsweep_is_importable_from_the_source_root():
    import rlsweep

    assert Path(rlsweep.__file__).resolve().parent == ROOT / "platform" / "rlsweep"

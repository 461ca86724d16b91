"""Build step that pyproject.toml cannot declare: the repository-root data.

Metadata and dependencies are in pyproject.toml. The weights manifest, the
generated prototxt and the experiment definitions live at the repository root
(the user's layout, and the only copy in git); a built package must carry them,
so ``build_py`` copies them into ``caffe_attacks/data/`` of the build, as the
table ``BUNDLED`` of caffe_attacks/resources.py says (the same table the
package reads them back with). An editable install reads the checkout in place
and gets no copies.
"""
import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _resources_module():
    # resources.py imports only the standard library, so it loads without the
    # package's dependencies (which the build environment may lack).
    spec = importlib.util.spec_from_file_location("caffe_attacks_resources_table",
                                                  HERE / "caffe_attacks" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundled_files():
    """(source under the repository, destination under the package) for every copied file."""
    resources = _resources_module()
    pairs = []
    for source, destination in resources.BUNDLED.items():
        path = HERE / source
        if path.is_file():
            pairs.append((path, Path(destination)))
            continue
        files = sorted(path.glob(resources.BUNDLED_PATTERNS[source]))
        if not files:
            raise FileNotFoundError("nothing to bundle in %s" % path)
        pairs += [(f, Path(destination) / f.name) for f in files]
    return pairs


class BuildPyWithProjectData(build_py):
    """build_py, plus the repository-root data copied into the package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        package_root = Path(self.build_lib) / "caffe_attacks"
        for source, destination in bundled_files():
            target = package_root / destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


setup(cmdclass={"build_py": BuildPyWithProjectData})

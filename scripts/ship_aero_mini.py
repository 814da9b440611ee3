"""Copy a finished aero-mini run's adapter into the package (float16), where
`aero.load("aero-mini")` finds it.

python scripts/ship_aero_mini.py runs/aero-mini
"""

import sys
from pathlib import Path

from aero.adapter import ADAPTER_FILENAME, convert_adapter
from aero.models import ADAPTER_FILE


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/aero-mini")
    source = run / "final" / ADAPTER_FILENAME
    if not source.is_file():
        sys.exit(
            f"{source} does not exist: finish the run first (aero train configs/aero-mini.yaml)."
        )
    out = convert_adapter(source, ADAPTER_FILE)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

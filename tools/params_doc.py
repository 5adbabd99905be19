"""Write docs/parameters.md and config/segment.yaml from the parameter table (or --check
that they are current).

    scripts/with_env python tools/params_doc.py          # rewrite both
    scripts/with_env python tools/params_doc.py --check  # exit 1 when one is stale
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seg_ros.core.config.params_doc import markdown, yaml_text

ROOT = Path(__file__).resolve().parents[1]
PAGES = {ROOT / 'docs' / 'parameters.md': markdown, ROOT / 'config' / 'segment.yaml': yaml_text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--check', action='store_true', help='exit 1 when a file is stale')
    args = ap.parse_args(argv)
    stale = 0
    for path, render in PAGES.items():
        text = render()
        if args.check:
            current = path.read_text(encoding='utf-8') if path.exists() else ''
            if current != text:
                print(f'{path} is stale: run tools/params_doc.py', file=sys.stderr)
                stale = 1
            continue
        path.write_text(text, encoding='utf-8')
        print(f'wrote {path}')
    return stale


if __name__ == '__main__':
    sys.exit(main())

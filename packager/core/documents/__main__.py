"""python -m packager.core.documents docs/schemas: write every document's JSON Schema."""

import sys
from pathlib import Path

from packager.core.documents import write_schemas

for path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
    print(path)

"""``python -m indexing.extract_child KIND TRUNCATED CPU_SECONDS MEMORY_BYTES``.

The child process of ``indexing.extraction.extract_in_child``: reads a file's bytes on
stdin, sets RLIMIT_CPU and RLIMIT_AS, extracts, and writes the result as JSON on stdout.
It never sets up Django: extraction is pure.
"""

from __future__ import annotations

import sys

from indexing.extraction import child_main

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))

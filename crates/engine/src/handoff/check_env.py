"""Prints, as one JSON line, the Python version and the version of each package named on the
command line (null when it is not installed): what the studio checks before it starts a job."""
import json
import sys
from importlib import metadata


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


print(json.dumps({"python": sys.version.split()[0], "packages": {n: version(n) for n in sys.argv[1:]}}))

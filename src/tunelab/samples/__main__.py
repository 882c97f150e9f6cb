"""python -m tunelab.samples: write the smoke profile's raw data under data/raw/."""

from pathlib import Path

from tunelab.samples.write import write_samples

for path in write_samples(Path("data/raw")):
    print(path)

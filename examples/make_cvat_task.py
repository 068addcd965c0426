"""Write a realistic-looking, partly annotated CVAT task export to try cvat-argo on.

    python examples/make_cvat_task.py --images 300 --out data/
    python -m cvat_argo run --source data/shapes.zip --model ssd-mobilenet-v2-small --args "epochs=50,batch_size=8"

The zip is a "CVAT for images 1.1" export (``annotations.xml`` + ``images/``) of squares, circles
and triangles on textured, lit backgrounds: boxes for squares and circles, polygons for triangles,
as people draw them. 60% of the images are annotated; the rest have no shapes yet, as in a task
that is only partly done. ``shapes-truth.xml`` beside it annotates every image, to score what the
pre-annotation produced. This is the data ``python -m cvat_argo quickstart`` runs on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cvat_argo.data.synthetic import generate_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--annotated-fraction", type=float, default=0.6)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="shapes")
    parser.add_argument("--out", type=Path, default=Path("data"))
    ns = parser.parse_args()
    task = generate_task(ns.out, images=ns.images, annotated_fraction=ns.annotated_fraction, width=ns.width,
                         height=ns.height, seed=ns.seed, name=ns.name)
    print(f"{task.export}: {task.images} images, {task.annotated} annotated, {task.objects} objects "
          f"(hidden truth of every image: {task.truth})")


if __name__ == "__main__":
    main()

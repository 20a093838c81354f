"""What the cross-epoch feed is worth to a consumer that takes time per batch, as training does.

    .venv/bin/python scripts/feed_ahead.py STORE SECONDS_PER_BATCH [--no-feed-ahead]

Iterates 8 epochs of STORE's train split (batch 128, the train graph on the CPU), sleeping
SECONDS_PER_BATCH after each batch in place of a training step, and prints images/s over
epochs 1-7 (epoch 0 is the warm-up: graph build, kernel compilation).
"""

import argparse
import time

from alexkit.pipeline.loader import make_loader

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("store")
parser.add_argument("seconds_per_batch", type=float)
parser.add_argument("--no-feed-ahead", dest="feed_ahead", action="store_false")
args = parser.parse_args()

loader = make_loader(args.store, "train", mode="train", batch_size=128, seed=0, feed_ahead=args.feed_ahead)
images, seconds = 0, 0.0
for epoch in range(8):
    loader.set_epoch(epoch)
    start, n = time.perf_counter(), 0
    for _, labels, _ in loader:
        n += len(labels)
        time.sleep(args.seconds_per_batch)  # the training step's stand-in
    if epoch:
        images, seconds = images + n, seconds + time.perf_counter() - start
print(f"feed_ahead={args.feed_ahead}: {images / seconds:,.0f} images/s over epochs 1-7, {args.seconds_per_batch * 1000:.0f} ms per batch")

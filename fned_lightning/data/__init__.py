"""Data modules, one source a file: `cifar10` (one-class splits), `folder` (parts in MVTec AD's
layout), `synthetic` (drawn washers); `base` holds the split and loaders they share, `images` the
file reading."""

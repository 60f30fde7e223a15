"""``fedmeta data``: get the Omniglot release (or CIFAR-100, for CIFAR-FS and FC100) and
check what a folder of Omniglot zips holds."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..tasks.download import BASE_URL, CIFAR100_URL, RELEASE, download_cifar100, \
    download_omniglot
from ..tasks.omniglot import CACHE_ENV, DIR_ENV, cache_path, data_dir, load_omniglot, \
    resolve_zips


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data`` with its actions ``download`` and ``info``."""
    parser = subparsers.add_parser(
        "data", help="download and inspect the Omniglot data",
        description="Omniglot's official zips: download them, or load a folder of them "
                    "(decoding every image once into a cache) and count what they hold.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    download = actions.add_parser(
        "download", help="download the official Omniglot release (or CIFAR-100)",
        description=f"Download {' and '.join(RELEASE)} from {BASE_URL}, check their MD5 "
                    f"sums and skip those already there intact. With --dataset cifar-100: "
                    f"{CIFAR100_URL}, checked and unpacked (the task.data_dir of CIFAR-FS "
                    f"and FC100).")
    download.add_argument("--dataset", choices=("omniglot", "cifar-100"), default="omniglot",
                          help="what to download (default: %(default)s)")
    download.add_argument("--dest", type=Path, metavar="DIR",
                          help=f"folder to put the files in (default: ${CACHE_ENV}/omniglot "
                               f"or ${CACHE_ENV}/cifar-100, else under ~/.cache/fedmeta)")
    download.add_argument("--base-url", metavar="URL",
                          help=f"where the zips are (default: {BASE_URL}); with --dataset "
                               f"cifar-100, the archive's URL (default: {CIFAR100_URL})")
    download.set_defaults(func=run_download)
    info = actions.add_parser(
        "info", help="count the alphabets, characters and images of a folder of zips",
        description="Load every Omniglot zip in a folder (images_background*.zip, "
                    "images_evaluation*.zip; an image in several zips counts once), cache "
                    "the decoded images and print what the folder holds, per alphabet.")
    info.add_argument("--dir", type=Path, metavar="DIR",
                      help=f"folder of the zips (default: ${DIR_ENV}, else where download "
                           f"puts them)")
    info.set_defaults(func=run_info)


def run_download(args: argparse.Namespace) -> int:
    """Download the release; print each zip's path and whether it was fetched (CIFAR-100:
    the folder it is unpacked in)."""
    if args.dataset == "cifar-100":
        folder = download_cifar100(args.dest, args.base_url or CIFAR100_URL)
        print(f"{folder}: cifar-100-python/ unpacked; use it as task.data_dir")
        return 0
    for path, fetched in download_omniglot(args.dest, args.base_url or BASE_URL).items():
        print(f"{path}: {'downloaded' if fetched else 'already there, checksum ok'}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print the zips, the cache file and the counts, in total and per alphabet."""
    zips = resolve_zips(data_dir(args.dir))
    data = load_omniglot(zips)
    print(f"zips: {', '.join(str(z) for z in zips)}")
    print(f"cache: {cache_path(zips)}")
    print(f"{len(data.alphabets)} alphabets, {data.num_classes} characters, {len(data)} images, "
          f"{len(np.unique(data.drawer))} drawers")
    width = max(len(a) for a in data.alphabets)
    print(f"{'alphabet':<{width}}  characters  images")
    for alphabet in data.alphabets:
        rows = data.alphabet == alphabet
        print(f"{alphabet:<{width}}  {len(np.unique(data.character[rows])):>10}  "
              f"{int(rows.sum()):>6}")
    return 0

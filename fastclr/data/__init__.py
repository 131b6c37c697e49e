"""Data for pretraining and evaluation: listing image folders, decoding, and the loaders.

Modules, one job each:

* :mod:`~fastclr.data.files`: list an image folder (classes, the one set of extensions, links
  followed without loops, what is left out and why), nothing decoded;
* :mod:`~fastclr.data.decode`: files → 8-bit RGB by one conversion rule; crops taken from the
  original image (with reduced-scale JPEG decoding where it keeps the crop the same);
* :mod:`~fastclr.data.plan`: what a run reads, listed once and split once
  (:mod:`~fastclr.data.split`: the one train / held-out rule);
* :mod:`~fastclr.data.memory`: the in-memory path (digits, small folders as one uint8 tensor);
* :mod:`~fastclr.data.stream`: the streaming loader (DataLoader workers decode each batch);
* :mod:`~fastclr.data.dali`: the same loader with NVIDIA DALI (nvJPEG on a GPU), lazily imported;
* :mod:`~fastclr.data.dali_pipeline`: an all-DALI pipeline (DALI's own augmentation ops too);
* :mod:`~fastclr.data.select`: which loader ``auto`` picks, and building it;
* :mod:`~fastclr.data.summary`: counts of skipped, converted and left-out files;
* :mod:`~fastclr.data.validate`: up-front decode checks with a cache (for DALI's own pipeline).
"""

from fastclr.data.files import IMAGE_EXTENSIONS, FileList, FolderListing, list_image_folder
from fastclr.data.memory import ImageData, TensorImageDataset, load_digits
from fastclr.data.plan import DataPlan, load_data, load_image_folder, plan_data
from fastclr.data.select import LOADERS, TrainData, build_train_data, resolve_loader
from fastclr.data.split import FileSet
from fastclr.data.stream import StreamingLoader, ViewBatch
from fastclr.data.summary import DataSummary

__all__ = [
    "IMAGE_EXTENSIONS",
    "LOADERS",
    "DataPlan",
    "DataSummary",
    "FileList",
    "FileSet",
    "FolderListing",
    "ImageData",
    "StreamingLoader",
    "TensorImageDataset",
    "TrainData",
    "ViewBatch",
    "build_train_data",
    "list_image_folder",
    "load_data",
    "load_digits",
    "load_image_folder",
    "plan_data",
    "resolve_loader",
]

"""Image–caption datasets: user folders and zips, the prepared format, the shapes domain."""

from .batch import collate, to_float, to_uint8
from .captioned import CaptionedImages
from .folder import EmptyDatasetError, FolderDataset
from .images import ImageOptions
from .open import open_dataset
from .prepared import PreparedDataset, prepare_dataset
from .report import ScanReport, Skip
from .shapes import ShapesDataset

__all__ = [
    "CaptionedImages", "EmptyDatasetError", "FolderDataset", "ImageOptions", "PreparedDataset",
    "ScanReport", "ShapesDataset", "Skip", "collate", "open_dataset", "prepare_dataset",
    "to_float", "to_uint8",
]

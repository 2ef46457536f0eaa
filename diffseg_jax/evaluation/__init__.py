"""The ADM evaluation suite (FID, sFID, IS, precision, recall) and segmentation metrics."""

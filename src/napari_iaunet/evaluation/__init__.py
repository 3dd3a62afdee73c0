"""Evaluation: COCO mask AP (pycocotools) plus F1 / precision / recall / mean IoU, AJI and PQ."""

from .metrics import evaluate, evaluate_coco, format_table, match_instances, pairwise_iou

__all__ = ["evaluate", "evaluate_coco", "format_table", "match_instances", "pairwise_iou"]

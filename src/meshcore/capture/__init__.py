"""Transparent capture as Istio does it: ``istio-iptables``'s rules, applied and removed."""

from meshcore.capture.apply import CaptureError, apply, cleanup, dry_run_lines
from meshcore.capture.config import CaptureConfig
from meshcore.capture.generate import build_rules

__all__ = ["CaptureConfig", "CaptureError", "apply", "build_rules", "cleanup", "dry_run_lines"]

"""Verification reports: report.json (the machine-readable record), report.md (for a PR or a model
card) and one self-contained report.html (plots as inline SVG, pictures as base64 PNG/GIF)."""

from weightsmith.verify.report.write import check_report_dir, write_report

__all__ = ["check_report_dir", "write_report"]

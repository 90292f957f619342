"""MagnaTagATune (top-50 tags, the reference's clean split)."""

"""Evaluation: FID/KID with clean-fid's protocol, LPIPS, prompt alignment, the eval CLI."""

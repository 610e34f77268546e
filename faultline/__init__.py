"""Composition root: the CLI, the ASGI entry point and the local-stack launcher.

The only package that imports api/, workers/, realtime/ and health/ together (import-linter checks it).
"""

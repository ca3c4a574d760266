"""Plug mixprec into the training frameworks people already use.

Each module imports its framework when it is imported (never at ``import mixprec``) and says
which extra to install when the framework is missing:

- ``mixprec.integrations.lightning``: ``MixprecPrecision``, a Lightning Fabric precision plugin.
- Hugging Face Accelerate needs no module: the recipe in docs/integrations.md is eight lines.
"""

"""Plug mixprec into the training frameworks people already use.

Each module imports its framework when it is imported (never at ``import mixprec``) and says
which extra to install when the framework is missing:

- ``mixprec.integrations.lightning``: ``MixprecPrecision``, a Lightning Fabric precision plugin.
- ``mixprec.integrations.accelerate``: the Hugging Face Accelerate recipe's one helper.
"""

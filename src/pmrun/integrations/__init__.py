"""Run other people's agent frameworks under pmrun without changing their code.

- :mod:`pmrun.integrations.claude_pm`: claude-multiagent-pm 1.4.7 (``install()``).
"""

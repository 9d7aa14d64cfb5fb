"""Provisioning knowledge shared by the Pulumi program (``infra/``) and ``replicator check``.

These modules live in the installed package on purpose: Pulumi's dynamic-provider host
unpickles our providers in a separate process, where only installed modules can be imported
(pulumi/pulumi#7453), and the checks must demand exactly what the program provisions.
"""

"""Placeholder replaced below."""


class RuleError(ValueError):
    pass


def compile_rule(rule):
    return rule

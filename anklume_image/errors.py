"""The one error a build reports: a sentence saying what went wrong and what to do."""


class BuildError(Exception):
    pass

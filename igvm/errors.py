"""The one exception type of the igvm package: every rejection names the header, offset and rule."""

from __future__ import annotations


class IgvmError(Exception):
    """An IGVM file, object or recipe breaks a rule of the IGVM specification or of a TDX host."""

    def __init__(
        self, rule: str, header_index: int | None = None, offset: int | None = None
    ) -> None:
        self.rule = rule
        self.header_index = header_index
        self.offset = offset
        super().__init__(str(self))

    def __str__(self) -> str:
        index = "-" if self.header_index is None else str(self.header_index)
        offset = "-" if self.offset is None else f"{self.offset:#x}"
        return f"{self.rule} (header index {index}, file offset {offset})"

    def __reduce__(self) -> tuple[type[IgvmError], tuple[str, int | None, int | None]]:
        return (IgvmError, (self.rule, self.header_index, self.offset))


class IgvmWarning(UserWarning):
    """A file is usable but has something a loader skips (an unknown optional header).

    `kind` names the class of warning (the CLI prints one line per kind with a count), and
    `header_index`/`offset` say where it occurred.
    """

    def __init__(
        self,
        message: str,
        kind: str = "warning",
        header_index: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.kind = kind
        self.header_index = header_index
        self.offset = offset
        super().__init__(message)

    def __reduce__(
        self,
    ) -> tuple[type[IgvmWarning], tuple[str, str, int | None, int | None]]:
        return (type(self), (str(self), self.kind, self.header_index, self.offset))


class IgvmFinding(IgvmWarning):
    """A file breaks a rule of the IGVM specification that loaders do not enforce.

    Microsoft's Rust `igvm` crate (the parser QEMU and OpenVMM loaders build on) accepts such a
    file, so reading does too; `igvm check --strict` reports each finding and fails.
    """

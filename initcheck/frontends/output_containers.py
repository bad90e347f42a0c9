"""Output containers a .pt2 file names but this process has not registered (transformers' ModelOutput classes,
diffusers' UNet2DOutput, ...): the analysis reads the graph, not the container, so while a file loads each unknown
name gets a stand-in class, built here, never imported from the name. They are deregistered afterwards, so a
later `import transformers` registers its own classes under those names as usual."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class OutputContainer:
    """Stands for a model's output class: its children and the context the file stored (JSON)."""

    serialized_name = ""

    def __init__(self, children: list, context) -> None:
        self.children, self.context = children, context


@contextmanager
def stand_ins_for_unknown_containers() -> Iterator[list[str]]:
    """While active, a tree spec naming an unregistered type deserialises with a stand-in; yields the names."""
    from torch.utils import _pytree as pytree

    original = pytree._json_to_treespec
    made: list[type[OutputContainer]] = []

    def json_to_treespec(schema):
        name = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(name, str) and name not in pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE:
            made.append(_register(pytree, name))
        return original(schema)

    protocols = dict(pytree._SUPPORTED_PROTOCOLS)
    pytree._json_to_treespec = json_to_treespec  # recursive: children come through here too
    for number, protocol in protocols.items():
        if protocol.json_to_treespec is original:
            pytree._SUPPORTED_PROTOCOLS[number] = protocol._replace(json_to_treespec=json_to_treespec)
    try:
        yield [cls.serialized_name for cls in made]
    finally:
        pytree._json_to_treespec = original
        pytree._SUPPORTED_PROTOCOLS.update(protocols)
        for cls in made:
            pytree._deregister_pytree_node(cls)


def _register(pytree, name: str) -> type[OutputContainer]:
    cls = type(
        f"OutputContainer_{len(pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE)}", (OutputContainer,), {"serialized_name": name}
    )
    pytree.register_pytree_node(
        cls,
        lambda node: (node.children, node.context),
        lambda children, context, cls=cls: cls(list(children), context),
        serialized_type_name=name,
    )
    return cls

"""Built-in `sentiment` attribute (negative, positive), trained on movie-review snippets."""

import dglm
from dglm_classifiers import card_path


@dglm.hookimpl
def register_attributes(register):
    register(card_path("sentiment"))

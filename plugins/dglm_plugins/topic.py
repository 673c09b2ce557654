"""Built-in `topic` attribute (business, entertainment, politics, sport, tech), trained on BBC News passages."""

import dglm
from dglm_classifiers import card_path


@dglm.hookimpl
def register_attributes(register):
    register(card_path("topic"))

"""Built-in `toxicity` attribute (neutral, offensive), trained on Davidson et al.'s labelled tweets (MIT licence);
steer away from offensive (`--attr toxicity=offensive:-1`, or toward neutral) to detoxify."""

import dglm
from dglm_classifiers import card_path


@dglm.hookimpl
def register_attributes(register):
    register(card_path("toxicity"))

//! Model-based test: random add / remove / depart / reopen sequences, with
//! injected write failures, against a simple `BTreeMap` model.

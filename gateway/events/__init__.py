"""Events out: webhooks that tell other systems what happened (docs/events.md).

`publisher.Events` is what the rest of the gateway calls; `model` the events, `formats` their
bodies, `signing` the signature, `queue` the bounded queue, `subscriptions` who wants what,
`delivery` the sender, `dedupe` one delivery across replicas.
"""

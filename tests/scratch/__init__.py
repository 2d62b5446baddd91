"""A scratch consumer app, installed only by ``tests.scratch.settings``.

It stands for a consumer someone adds tomorrow: its folder plus one ``INSTALLED_APPS``
line (in ``settings.py`` here), and nothing else changed anywhere.
"""

# Here, not in consumer.py: importing consumer.py registers the consumer, and a test
# process without the scratch settings must not.
SCRATCH_EVENT = "test.scratch"
SCRATCH_QUEUE = "scratch"

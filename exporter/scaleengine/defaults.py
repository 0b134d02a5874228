"""The client's settings' defaults, one constant each: config.py's defaults are these, and the
client's when it is built without a config (tests, bench). Light on purpose: config.py imports
it without loading the HTTP stack."""

DEFAULT_TIMEOUT = 10.0  # seconds for a whole request (scaleengine.timeout)
DEFAULT_PAGE_SIZE = 1000  # rows asked per page (poll.page_size)
DEFAULT_MAX_PAGES = 1000  # pages of one fetch (poll.max_pages)
DEFAULT_RETRIES = 3  # retries of a transient failure of one page (poll.retries)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one answer, decompressed
DEFAULT_MAX_FETCH_BYTES = 256 * 1024 * 1024  # what one fetch holds (see VIDEO_COST)
DEFAULT_MAX_LABEL_LENGTH = 1024  # bytes of UTF-8 (limits.max_label_length)
# what one distinct video costs a fetch besides its URL's characters: its dict entries, tuple
# and ints (measured: about 250 bytes on CPython 3.11)
VIDEO_COST = 256

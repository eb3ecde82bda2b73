"""Process plumbing the edge and the cloud share: logging set-up and the like.

Not the wire protocol (that is ``protocol``, which does no I/O): this is how a
process of ours writes its logs, the same way whichever one it is.
"""

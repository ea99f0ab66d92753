FROM busybox as lower
FROM busybox AS dup
from busybox AS Other

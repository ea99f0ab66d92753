# check=skip=UndefinedVar,JSONArgsRecommended
from busybox
run echo $NOPE
RUN echo hi
cmd echo x

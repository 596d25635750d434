# Offline stand-in for the official nginx image (scripts/compose-smoke.sh). The rootfs is a
# Debian sid debootstrap with nginx (compose.conf needs nginx >= 1.27.3 for `resolve` in
# upstream blocks; bookworm has 1.22). Like the official image: conf.d/*.conf inside http {},
# logs to stdout/stderr, html in /usr/share/nginx/html, `nginx -g 'daemon off;'`.
ARG BASE
FROM ${BASE}
COPY nginx.conf /etc/nginx/nginx.conf
RUN rm -f /etc/nginx/sites-enabled/* \
 && mkdir -p /usr/share/nginx/html /etc/nginx/conf.d \
 && ln -sf /dev/stdout /var/log/nginx/access.log \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

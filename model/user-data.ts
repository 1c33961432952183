/**
 * User-data rendering. For now the multipart MIME carries cloudgate's phone-home part only;
 * the CernVM context parts (µCernVM block, amiconfig, cloud-config) join it with contexts.
 */

export interface PhoneHome {
  /** Full URL the guest POSTs its readiness report to. */
  url: string;
  instanceId: string;
  token: string;
  /** CVMFS repositories the guest must probe before reporting ok. */
  repositories: string[];
}

export const PHONE_HOME_CONTENT_TYPE = 'text/x-cloudgate-phone-home';

export function renderUserData(phoneHome: PhoneHome): string {
  const boundary = `==cloudgate-${phoneHome.instanceId}==`;
  return [
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    'MIME-Version: 1.0',
    '',
    `--${boundary}`,
    `Content-Type: ${PHONE_HOME_CONTENT_TYPE}; charset="utf-8"`,
    'Content-Disposition: attachment; filename="cloudgate-phone-home.json"',
    '',
    JSON.stringify(phoneHome),
    `--${boundary}--`,
    '',
  ].join('\r\n');
}

/** What a guest agent does at boot: find its phone-home part in the user-data. */
export function extractPhoneHome(userData: string): PhoneHome | undefined {
  const m = new RegExp(`Content-Type: ${PHONE_HOME_CONTENT_TYPE}[^\\r\\n]*\\r?\\n(?:[^\\r\\n]+\\r?\\n)*\\r?\\n([^\\r\\n]+)`).exec(userData);
  if (!m) return undefined;
  try {
    return JSON.parse(m[1]) as PhoneHome;
  } catch {
    return undefined;
  }
}
